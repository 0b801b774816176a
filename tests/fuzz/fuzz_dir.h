/*
 * fuzz_dir.h — the scratch directory a fuzz target keeps its files in for
 * the whole run (made with mkdtemp at its first input), removed with
 * everything in it when the process exits.
 */
#ifndef ESIM_TESTS_FUZZ_DIR_H
#define ESIM_TESTS_FUZZ_DIR_H

#include <ftw.h>
#include <stdio.h>

static inline int fuzz_dir_remove_entry(const char *path, const struct stat *st, int flag,
                                        struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes |dir| and everything under it (symbolic links as links). */
static inline void fuzz_dir_remove(const char *dir)
{
    nftw(dir, fuzz_dir_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
