/*
 * fuzz_driver.c — runs a libFuzzer target without libFuzzer, so every
 * target gets a bounded, deterministic run under ctest with gcc and the
 * sanitizers: the committed corpus (tests/data/fuzz/<name>) first, then
 * FUZZ_SMOKE_ITERATIONS (default 2000) mutations of it from a fixed seed.
 * ASan/UBSan or the target's own abort() make it fail. The real fuzzing is
 * scripts/fuzz.sh (clang, libFuzzer): `make fuzz`.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/esim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SEEDS 512
#define FUZZ_MAX_INPUT (64 * 1024)

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static size_t below(size_t n)
{
    return n ? (size_t)(next_random() % n) : 0;
}

/* Byte-level mutations in libFuzzer's spirit; the structure comes from the
 * corpus (spliced into itself and into other seeds). */
static void mutate(esim_buf *in, const esim_buf *seeds, size_t n_seeds)
{
    static const char *const tokens[] = {
        "\"", "{",     "}",    "[", "]",    ",",        ":", "\\u0000",          "\\ud800", "null",
        "-1", "1e999", "\r\n", ";", "\xff", "\xc3\x28", "0", "\x30\x82\xff\xff", "\x00"};
    size_t len = in->len;
    unsigned char *p = in->data;
    switch (below(7)) {
    case 0:
        if (len)
            p[below(len)] ^= (unsigned char)(1u << below(8));
        break;
    case 1:
        if (len)
            p[below(len)] = (unsigned char)next_random();
        break;
    case 2: {
        if (!len)
            break;
        size_t at = below(len), n = 1 + below(len - at < 64 ? len - at : 64);
        memmove(p + at, p + at + n, len - at - n);
        in->len -= n;
        break;
    }
    case 3: {
        if (!len || len > FUZZ_MAX_INPUT / 2)
            break;
        size_t at = below(len), n = 1 + below(len - at < 256 ? len - at : 256);
        esim_buf out = {0};
        esim_buf_append(&out, p, at + n);
        esim_buf_append(&out, p + at, len - at);
        esim_buf_free(in);
        *in = out;
        break;
    }
    case 4:
        in->len = below(len + 1);
        break;
    case 5: {
        const char *t = tokens[below(sizeof tokens / sizeof tokens[0])];
        size_t tl = t[0] ? strlen(t) : 1;
        size_t at = below(len + 1);
        esim_buf out = {0};
        esim_buf_append(&out, p, at);
        esim_buf_append(&out, t, tl);
        esim_buf_append(&out, p + at, len - at);
        esim_buf_free(in);
        *in = out;
        break;
    }
    default: {
        const esim_buf *other = &seeds[below(n_seeds)];
        size_t at = below(len + 1), from = below(other->len + 1);
        in->len = at;
        esim_buf_append(in, other->data + from, other->len - from);
        break;
    }
    }
    if (in->len > FUZZ_MAX_INPUT)
        in->len = FUZZ_MAX_INPUT;
}

int main(int argc, char **argv)
{
    const char *data = getenv("ESIM_TEST_DATA");
    const char *iters_env = getenv("FUZZ_SMOKE_ITERATIONS");
    long iterations = iters_env ? strtol(iters_env, NULL, 10) : 2000;
    char dir[1024];
    if (argc > 1)
        snprintf(dir, sizeof dir, "%s", argv[1]);
    else
        snprintf(dir, sizeof dir, "%s/fuzz/%s", data ? data : "tests/data", FUZZ_NAME);
    static esim_buf seeds[MAX_SEEDS];
    size_t n = 0;
    struct dirent **entries = NULL;
    int found = scandir(dir, &entries, NULL, alphasort);
    for (int k = 0; k < found; k++) {
        if (entries[k]->d_name[0] != '.' && n < MAX_SEEDS) {
            char path[2048];
            snprintf(path, sizeof path, "%s/%s", dir, entries[k]->d_name);
            if (esim_read_file(path, FUZZ_MAX_INPUT, &seeds[n], NULL) == ESIM_OK) {
                LLVMFuzzerTestOneInput(seeds[n].data ? seeds[n].data : (const uint8_t *)"",
                                       seeds[n].len);
                n++;
            }
        }
        free(entries[k]);
    }
    free(entries);
    if (n == 0) {
        fprintf(stderr, "fuzz smoke %s: no corpus in %s\n", FUZZ_NAME, dir);
        return 1;
    }
    for (long it = 0; it < iterations; it++) {
        esim_buf input = {0};
        const esim_buf *seed = &seeds[below(n)];
        esim_buf_append(&input, seed->data ? seed->data : (const unsigned char *)"", seed->len);
        for (size_t r = 1 + below(4); r > 0; r--)
            mutate(&input, seeds, n);
        LLVMFuzzerTestOneInput(input.data ? input.data : (const uint8_t *)"", input.len);
        esim_buf_free(&input);
    }
    printf("fuzz smoke %s: %zu corpus files, %ld mutations, no finding\n", FUZZ_NAME, n,
           iterations);
    for (size_t k = 0; k < n; k++)
        esim_buf_free(&seeds[k]);
    return 0;
}
