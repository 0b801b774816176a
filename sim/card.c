/*
 * card.c — the virtual eUICC as a smart card: ISO 7816-4 APDUs as a UICC
 * answers them (logical channels, SELECT of the ISD-R by AID, GlobalPlatform
 * STORE DATA chaining, 61xx + GET RESPONSE), over sim_euicc_es10().
 */
#include <stdlib.h>
#include <string.h>

#include "sim/sim_internal.h"

#define CARD_CHANNELS 20              /* 0-3 first interindustry, 4-19 further */
#define CARD_MAX_COMMAND (64u * 1024) /* a chained ES10 request, assembled */

/* Status words (ISO 7816-4 §5.6). */
enum {
    SW_OK = 0x9000,
    SW_WRONG_LENGTH = 0x6700,
    SW_CHANNEL_NOT_SUPPORTED = 0x6881,
    SW_CONDITIONS = 0x6985,
    SW_WRONG_DATA = 0x6A80,
    SW_FUNC_NOT_SUPPORTED = 0x6A81,
    SW_NOT_FOUND = 0x6A82,
    SW_NO_MEMORY = 0x6A84,
    SW_WRONG_P1P2 = 0x6A86,
    SW_REF_NOT_FOUND = 0x6A88,
    SW_INS = 0x6D00,
    SW_CLA = 0x6E00,
    SW_UNKNOWN = 0x6F00,
};

static const uint8_t isdr_aid[16] = {0xA0, 0x00, 0x00, 0x05, 0x59, 0x10, 0x10, 0xFF,
                                     0xFF, 0xFF, 0xFF, 0x89, 0x00, 0x00, 0x01, 0x00};

/* T=0 first (TD1), then T=1 (TD2), TCK over T0..TD2: PC/SC clients of eUICCs
 * connect with T=0 only, and a card that does not offer it is refused. */
static const uint8_t card_atr[] = {0x3B, 0x80, 0x80, 0x01, 0x01};

typedef struct {
    bool open, isdr;
    esim_buf in;       /* STORE DATA blocks received so far */
    unsigned next_blk; /* the block number the next STORE DATA must carry */
    esim_buf out;      /* answer still to be fetched with GET RESPONSE */
    size_t out_off;
} card_channel;

struct sim_card {
    sim_euicc *e;
    bool direct;
    card_channel ch[CARD_CHANNELS];
};

const uint8_t *sim_card_atr(size_t *len)
{
    *len = sizeof card_atr;
    return card_atr;
}

esim_err sim_card_new(sim_euicc *e, sim_card **out, esim_error *err)
{
    if (!e || !out)
        return esim_fail(err, ESIM_EINVAL, "sim_card_new needs an eUICC");
    sim_card *c = calloc(1, sizeof *c);
    if (!c)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    c->e = e;
    c->ch[0].open = true;
    *out = c;
    return ESIM_OK;
}

static void channel_clear(card_channel *ch)
{
    esim_buf_free(&ch->in);
    esim_buf_free(&ch->out);
    ch->out_off = 0;
    ch->next_blk = 0;
    ch->isdr = false;
}

void sim_card_free(sim_card *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < CARD_CHANNELS; i++)
        channel_clear(&c->ch[i]);
    free(c);
}

void sim_card_set_direct(sim_card *c, bool direct)
{
    c->direct = direct;
}

void sim_card_reset(sim_card *c)
{
    /* A reset closes every logical channel but the basic one and forgets
     * every selection; the eUICC's own state is untouched. */
    for (size_t i = 0; i < CARD_CHANNELS; i++) {
        channel_clear(&c->ch[i]);
        c->ch[i].open = i == 0;
    }
}

static esim_err put_sw(esim_buf *rsp, unsigned sw)
{
    uint8_t b[2] = {(uint8_t)(sw >> 8), (uint8_t)sw};
    return esim_buf_append(rsp, b, 2);
}

/* Hands |ch|'s pending answer out: up to |le| bytes, then 61xx while more
 * remains (xx = what remains, 00 meaning 256 or more), else 90 00. */
static esim_err give_out(card_channel *ch, size_t le, esim_buf *rsp)
{
    size_t left = ch->out.len - ch->out_off;
    size_t n = left < le ? left : le;
    esim_err rc = esim_buf_append(rsp, ch->out.data + ch->out_off, n);
    if (rc != ESIM_OK)
        return rc;
    ch->out_off += n;
    left -= n;
    if (left == 0) {
        esim_buf_free(&ch->out);
        ch->out_off = 0;
        return put_sw(rsp, SW_OK);
    }
    return put_sw(rsp, 0x6100 | (left >= 256 ? 0 : (unsigned)left));
}

/* An answer with data: T=0 style (61xx, the client fetches it with GET
 * RESPONSE) or, in direct mode and when it fits, the data with 90 00. */
static esim_err answer(sim_card *c, card_channel *ch, esim_buf *data, esim_buf *rsp)
{
    esim_buf_free(&ch->out);
    ch->out = *data;
    *data = (esim_buf){0};
    ch->out_off = 0;
    if (ch->out.len == 0) {
        esim_buf_free(&ch->out);
        return put_sw(rsp, SW_OK);
    }
    if (c->direct && ch->out.len <= 256)
        return give_out(ch, 256, rsp);
    return put_sw(rsp, 0x6100 | (ch->out.len >= 256 ? 0 : (unsigned)ch->out.len));
}

static unsigned manage_channel(sim_card *c, unsigned cur, uint8_t p1, uint8_t p2, esim_buf *data)
{
    if (p1 == 0x00) { /* open */
        unsigned want = p2;
        if (want == 0) {
            for (unsigned i = 1; i < CARD_CHANNELS && !want; i++)
                if (!c->ch[i].open)
                    want = i;
            if (!want)
                return SW_FUNC_NOT_SUPPORTED; /* no channel left */
            uint8_t b = (uint8_t)want;
            if (esim_buf_append(data, &b, 1) != ESIM_OK)
                return SW_UNKNOWN;
        } else if (want >= CARD_CHANNELS || c->ch[want].open) {
            return SW_WRONG_P1P2;
        }
        channel_clear(&c->ch[want]);
        c->ch[want].open = true;
        return SW_OK;
    }
    if (p1 == 0x80) { /* close |p2|, or the channel the command came on */
        unsigned which = p2 ? p2 : cur;
        if (which == 0 || which >= CARD_CHANNELS)
            return SW_WRONG_P1P2;
        if (!c->ch[which].open)
            return SW_REF_NOT_FOUND;
        channel_clear(&c->ch[which]);
        c->ch[which].open = false;
        return SW_OK;
    }
    return SW_WRONG_P1P2;
}

static unsigned select_file(card_channel *ch, uint8_t p1, const uint8_t *aid, size_t lc,
                            esim_buf *fci)
{
    if (p1 > 0x09)
        return SW_WRONG_P1P2;
    /* Selection by DF name (AID), whole or a leading part of it. */
    if (p1 != 0x04 || lc == 0 || lc > sizeof isdr_aid || memcmp(aid, isdr_aid, lc) != 0)
        return SW_NOT_FOUND;
    ch->isdr = true;
    esim_buf_free(&ch->in);
    ch->next_blk = 0;
    /* FCI: 6F { 84 DF name } — enough for the clients that read it. */
    uint8_t head[] = {0x6F, 2 + sizeof isdr_aid, 0x84, sizeof isdr_aid};
    if (esim_buf_append(fci, head, sizeof head) != ESIM_OK ||
        esim_buf_append(fci, isdr_aid, sizeof isdr_aid) != ESIM_OK)
        return SW_UNKNOWN;
    return SW_OK;
}

/* GlobalPlatform STORE DATA to the ISD-R: P1 0x11 more blocks, 0x91 the
 * last one (BER-TLV data, no encryption); P2 the block number from 0. The
 * assembled request goes to the eUICC's ES10 entry point. */
static unsigned store_data(sim_card *c, card_channel *ch, uint8_t p1, uint8_t p2, const uint8_t *d,
                           size_t lc, esim_buf *reply)
{
    if (!ch->isdr)
        return SW_CONDITIONS;
    if ((p1 & 0x7F) != 0x11 || p2 != (ch->next_blk & 0xFF)) {
        esim_buf_free(&ch->in);
        ch->next_blk = 0;
        return SW_WRONG_P1P2;
    }
    if (ch->in.len + lc > CARD_MAX_COMMAND) {
        esim_buf_free(&ch->in);
        ch->next_blk = 0;
        return SW_NO_MEMORY;
    }
    if (esim_buf_append(&ch->in, d, lc) != ESIM_OK)
        return SW_UNKNOWN;
    ch->next_blk++;
    if (!(p1 & 0x80))
        return SW_OK;
    esim_buf req = ch->in;
    ch->in = (esim_buf){0};
    ch->next_blk = 0;
    esim_err rc = sim_euicc_es10(c->e, req.data, req.len, reply, NULL);
    esim_buf_free(&req);
    if (rc == ESIM_OK)
        return SW_OK;
    esim_buf_free(reply);
    return rc == ESIM_ENOMEM ? SW_UNKNOWN : SW_WRONG_DATA;
}

esim_err sim_card_apdu(sim_card *c, const uint8_t *apdu, size_t len, esim_buf *rsp, esim_error *err)
{
    (void)err;
    if (len < 4)
        return put_sw(rsp, SW_WRONG_LENGTH);
    uint8_t cla = apdu[0], ins = apdu[1], p1 = apdu[2], p2 = apdu[3];
    if (cla == 0xFF)
        return put_sw(rsp, SW_CLA);
    /* ISO 7816-4 §5.4.1: b7 set = further interindustry (channels 4-19),
     * else b2-b1 name channels 0-3. GlobalPlatform's 8x/Cx/Ex the same. */
    unsigned chn = (cla & 0x40) ? 4u + (cla & 0x0Fu) : (cla & 0x03u);
    bool proprietary = (cla & 0x80) != 0;
    if (cla >= 0xA0 && cla < 0xC0)
        return put_sw(rsp, SW_CLA);
    size_t lc = 0, le = 256;
    const uint8_t *data = NULL;
    if (len == 5) {
        le = apdu[4] ? apdu[4] : 256;
    } else if (len > 5) {
        lc = apdu[4];
        data = apdu + 5;
        /* Short APDUs only: extended lengths (Lc = 00 ...) are not offered. */
        if (lc == 0 || (len != 5 + lc && len != 6 + lc))
            return put_sw(rsp, SW_WRONG_LENGTH);
        if (len == 6 + lc)
            le = apdu[5 + lc] ? apdu[5 + lc] : 256;
    }
    card_channel *ch = &c->ch[chn];
    if (!ch->open)
        return put_sw(rsp, SW_CHANNEL_NOT_SUPPORTED);
    if (ins == 0xC0) {
        if (!ch->out.len)
            return put_sw(rsp, SW_CONDITIONS);
        return give_out(ch, le, rsp);
    }
    /* Any other command drops an answer nobody fetched. */
    esim_buf_free(&ch->out);
    ch->out_off = 0;
    esim_buf out = {0};
    unsigned sw;
    switch (ins) {
    case 0x70: /* MANAGE CHANNEL */
        sw = proprietary ? SW_CLA : manage_channel(c, chn, p1, p2, &out);
        break;
    case 0xA4: /* SELECT */
        sw = proprietary ? SW_CLA : select_file(ch, p1, data, lc, &out);
        break;
    case 0xAA: /* TERMINAL CAPABILITY: noted, nothing to adapt */
        sw = proprietary ? SW_OK : SW_CLA;
        break;
    case 0xE2: /* STORE DATA */
        sw = proprietary ? store_data(c, ch, p1, p2, data, lc, &out) : SW_CLA;
        break;
    default:
        sw = SW_INS;
    }
    esim_err rc;
    if (sw != SW_OK) {
        esim_buf_free(&out);
        rc = put_sw(rsp, sw);
    } else if (ins == 0x70) { /* the channel number comes back directly */
        rc = esim_buf_append(rsp, out.data ? out.data : (const uint8_t *)"", out.len);
        if (rc == ESIM_OK)
            rc = put_sw(rsp, SW_OK);
        esim_buf_free(&out);
    } else {
        rc = answer(c, ch, &out, rsp);
    }
    return rc;
}
