/*
 * fuzz_smoke_driver.c — a short, deterministic fuzz run of fuzz_msg_parse.c
 * under ctest, with no libFuzzer needed: real device messages from the
 * builders, hand-made hostile seeds and the corpus in
 * tests/data/fuzz/msg_parse, then a fixed number of seeded mutations.
 * ASan/UBSan or the target's own aborts make it fail.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "plist/esim_plist.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SEEDS 128
#define ITERATIONS 20000
#define FUZZ_MAX_INPUT (64 * 1024)

typedef struct {
    esim_buf seeds[MAX_SEEDS];
    size_t n;
    uint64_t rng;
} corpus;

static uint64_t next_random(corpus *c)
{
    /* xorshift64: fixed seed, so a failure reproduces exactly. */
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

static size_t below(corpus *c, size_t n)
{
    return n ? (size_t)(next_random(c) % n) : 0;
}

static void add_seed(corpus *c, const void *data, size_t len)
{
    assert_true(c->n < MAX_SEEDS);
    assert_int_equal(esim_buf_append(&c->seeds[c->n++], data, len), ESIM_OK);
}

static void add_built_seeds(corpus *c)
{
    static const char udid[] = "00008030-001A2B3C4D5E6F70";
    static const char topic[] = "com.apple.mgmt.External.5f7e6a2c";
    esim_buf b = {0};
    esim_authenticate_info info = {.udid = udid,
                                   .topic = topic,
                                   .os_version = "18.1",
                                   .serial_number = "F2LXK0Q1PLJM",
                                   .model = "iPhone"};
    assert_int_equal(esim_msg_build_authenticate(&info, &b, NULL), ESIM_OK);
    add_seed(c, b.data, b.len);
    unsigned char token[32] = {0xAB, 0xCD};
    assert_int_equal(esim_msg_build_token_update(udid, topic, token, 32, "magic", &b, NULL),
                     ESIM_OK);
    add_seed(c, b.data, b.len);
    assert_int_equal(esim_msg_build_checkout(udid, topic, &b, NULL), ESIM_OK);
    add_seed(c, b.data, b.len);

    plist_t sub = plist_new_dict();
    plist_dict_set_item(sub, "EID", plist_new_string("89882119900000000000000000001654"));
    plist_dict_set_item(sub, "ICCID", plist_new_string("8944500102198304826"));
    plist_dict_set_item(sub, "IsDataPreferred", plist_new_bool(1));
    plist_t list = plist_new_array();
    plist_array_append_item(list, sub);
    plist_t responses = plist_new_dict();
    plist_dict_set_item(responses, "ServiceSubscriptions", list);
    plist_t extra = plist_new_dict();
    plist_dict_set_item(extra, "QueryResponses", responses);
    esim_error_chain_entry chain = {
        .code = 36003, .domain = "CTCellularPlanErrorDomain", .localized_description = "busy"};
    for (int f = ESIM_PLIST_XML; f <= ESIM_PLIST_BINARY; f++) {
        assert_int_equal(esim_msg_build_result(udid, ESIM_STATUS_ACKNOWLEDGED, "c-1", NULL, 0,
                                               extra, (esim_plist_format)f, &b, NULL),
                         ESIM_OK);
        add_seed(c, b.data, b.len);
        assert_int_equal(esim_msg_build_result(udid, ESIM_STATUS_ERROR, "c-2", &chain, 1, NULL,
                                               (esim_plist_format)f, &b, NULL),
                         ESIM_OK);
        add_seed(c, b.data, b.len);
    }
    plist_free(extra);
    esim_cmd cmd;
    assert_int_equal(esim_cmd_refresh_plans("smdp.example.com", NULL, &cmd, NULL), ESIM_OK);
    add_seed(c, cmd.body.data, cmd.body.len);
    esim_cmd_free(&cmd);
    esim_profile_opts opts = {.identifier = "com.example.esim"};
    assert_int_equal(esim_profile_build(&opts, NULL, 0, ESIM_PLIST_XML, &b, NULL), ESIM_OK);
    add_seed(c, b.data, b.len);
    esim_buf_free(&b);
}

static void add_hostile_seeds(corpus *c)
{
    esim_buf b = {0};
    esim_buf_append_str(&b, "<plist><dict><key>UDID</key><string>A</string><key>Status</key>"
                            "<string>Idle</string><key>X</key>");
    for (int k = 0; k < 5000; k++)
        esim_buf_append_str(&b, "<array>");
    add_seed(c, b.data, b.len);
    esim_buf_free(&b);
    /* Binary: object 0 is an array referring to itself. */
    unsigned char cyc[8 + 2 + 1 + 32] = "bplist00";
    cyc[8] = 0xA1;
    cyc[10] = 8;
    cyc[11 + 6] = 1;
    cyc[11 + 7] = 1;
    cyc[11 + 15] = 1;  /* one object */
    cyc[11 + 31] = 10; /* offset table at 10 */
    add_seed(c, cyc, sizeof cyc);
    static const char *const texts[] = {
        "<plist><dict><key>MessageType</key><string>TokenUpdate</string><key>UDID</key>"
        "<string>A</string><key>Topic</key><string>t</string><key>Token</key><data>"
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=</data><key>PushMagic</key><string>m"
        "</string></dict></plist>",
        "<plist><dict><key>UDID</key><string>A</string><key>Status</key><string>Error</string>"
        "<key>CommandUUID</key><string>u</string><key>ErrorChain</key><array><dict><key>"
        "ErrorCode</key><integer>-12021</integer><key>ErrorDomain</key><string>MCMDMErrorDomain"
        "</string></dict></array></dict></plist>",
        "<!-- <dict> --><![CDATA[<array>]]><plist><dict/></plist>",
    };
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++)
        add_seed(c, texts[k], strlen(texts[k]));
}

/* Seeds someone saved (e.g. from a libFuzzer run) live in the source tree. */
static void add_corpus_dir(corpus *c)
{
    const char *data = getenv("ESIM_TEST_DATA");
    if (!data)
        return;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fuzz/msg_parse", data);
    struct dirent **entries = NULL;
    /* Sorted, so the run is the same on every file system. */
    int n = scandir(dir, &entries, NULL, alphasort);
    for (int k = 0; k < n; k++) {
        const char *name = entries[k]->d_name;
        if (name[0] != '.' && c->n < MAX_SEEDS) {
            char path[2048];
            snprintf(path, sizeof path, "%s/%s", dir, name);
            esim_buf b = {0};
            if (esim_read_file(path, FUZZ_MAX_INPUT, &b, NULL) == ESIM_OK && b.len > 0)
                add_seed(c, b.data, b.len);
            esim_buf_free(&b);
        }
        free(entries[k]);
    }
    free(entries);
}

static const char *const tokens[] = {
    "<dict>",
    "</dict>",
    "<array>",
    "</array>",
    "<dict/>",
    "<array/>",
    "<key>Status</key>",
    "<string>Idle</string>",
    "<string>NotNow</string>",
    "<key>UDID</key>",
    "<integer>-1</integer>",
    "<data>AAAA</data>",
    "<true/>",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "&lt;",
    "&#0;",
    "&#x110000;",
    "<key>QueryResponses</key>",
    "<key>ServiceSubscriptions</key>",
    "<real>1e308</real>",
    "<date>2024-01-01T00:00:00Z</date>",
    "\xff\xfe",
    "bplist00",
};

static void mutate(corpus *c, esim_buf *in)
{
    size_t len = in->len;
    unsigned char *p = in->data;
    switch (below(c, 8)) {
    case 0: /* flip a bit */
        if (len)
            p[below(c, len)] ^= (unsigned char)(1u << below(c, 8));
        break;
    case 1: { /* an interesting byte */
        static const unsigned char bytes[] = {0, 0xFF, '<', '>', '/', 0x0F, 0xDF, 0xAF, 0x5F, 0x1F};
        if (len)
            p[below(c, len)] = bytes[below(c, sizeof bytes)];
        break;
    }
    case 2: { /* delete a range */
        if (!len)
            break;
        size_t at = below(c, len), n = 1 + below(c, len - at);
        memmove(p + at, p + at + n, len - at - n);
        in->len -= n;
        break;
    }
    case 3: { /* duplicate a range in place: grows nesting */
        if (!len || len > FUZZ_MAX_INPUT / 2)
            break;
        size_t at = below(c, len), n = 1 + below(c, len - at < 256 ? len - at : 256);
        esim_buf out = {0};
        esim_buf_append(&out, p, at + n);
        esim_buf_append(&out, p + at, len - at);
        esim_buf_free(in);
        *in = out;
        break;
    }
    case 4: /* truncate */
        in->len = below(c, len + 1);
        break;
    case 5: { /* insert a token */
        const char *t = tokens[below(c, sizeof tokens / sizeof tokens[0])];
        size_t at = below(c, len + 1);
        esim_buf out = {0};
        esim_buf_append(&out, p, at);
        esim_buf_append_str(&out, t);
        esim_buf_append(&out, p + at, len - at);
        esim_buf_free(in);
        *in = out;
        break;
    }
    case 6: { /* splice the tail of another seed */
        const esim_buf *other = &c->seeds[below(c, c->n)];
        size_t at = below(c, len + 1), from = below(c, other->len + 1);
        in->len = at;
        esim_buf_append(in, other->data + from, other->len - from);
        break;
    }
    default: /* binary trailer fields: counts, sizes, offsets */
        if (len >= 32) {
            size_t field = len - 32 + below(c, 32);
            uint64_t r = next_random(c);
            p[field] = (r & 1) ? (unsigned char)r : (unsigned char)(below(c, 3) ? 0 : 0xFF);
        }
        break;
    }
    if (in->len > FUZZ_MAX_INPUT)
        in->len = FUZZ_MAX_INPUT;
    if (in->data)
        in->data[in->len] = '\0';
}

static void test_fuzz_smoke(void **state)
{
    (void)state;
    corpus *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->rng = 0x9E3779B97F4A7C15ull;
    add_built_seeds(c);
    size_t n_built = c->n;
    add_hostile_seeds(c);
    add_corpus_dir(c);
    for (size_t k = 0; k < c->n; k++)
        LLVMFuzzerTestOneInput(c->seeds[k].data, c->seeds[k].len);
    size_t accepted = 0, too_big = 0;
    for (int it = 0; it < ITERATIONS; it++) {
        /* Half the time start from a well-formed message, so mutations reach
         * the message rules and not only the plist parser. */
        const esim_buf *seed = &c->seeds[below(c, (it & 1) ? n_built : c->n)];
        esim_buf input = {0};
        assert_int_equal(esim_buf_append(&input, seed->data, seed->len), ESIM_OK);
        size_t rounds = 1 + below(c, 4);
        for (size_t r = 0; r < rounds; r++)
            mutate(c, &input);
        const uint8_t *bytes = input.data ? input.data : (const uint8_t *)"";
        LLVMFuzzerTestOneInput(bytes, input.len);
        esim_msg m;
        esim_err rc = esim_msg_parse(bytes, input.len, NULL, &m, NULL);
        if (rc == ESIM_OK) {
            accepted++;
            esim_msg_free(&m);
        } else if (rc == ESIM_ETOOBIG) {
            too_big++;
        }
        esim_buf_free(&input);
    }
    printf("fuzz smoke: %d inputs, %zu accepted, %zu over a limit, %zu refused otherwise\n",
           ITERATIONS, accepted, too_big, (size_t)ITERATIONS - accepted - too_big);
    /* A run where nothing parses (or nothing is refused) tested nothing. */
    assert_true(accepted >= 20);
    assert_true(accepted < ITERATIONS);
    for (size_t k = 0; k < c->n; k++)
        esim_buf_free(&c->seeds[k]);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fuzz_smoke)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
