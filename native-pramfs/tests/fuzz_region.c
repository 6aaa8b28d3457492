/* Bounded mutation fuzzer for everything that parses the on-region format
 * (superblocks, region headers, metadata records, directory entries, extents):
 * mutates a valid small file system, half the time re-sealing the checksums
 * so the parsers behind them are reached, and runs fsck (check and repair) on
 * it under ASan/UBSan. Usage: fuzz_region SECONDS [SEED]. Any crash fails.
 * `fuzz_region --write-seed FILE` writes the valid seed image instead (the
 * libFuzzer target, fuzz_libfuzzer.c, starts its corpus from it). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "format.h"
#include "fuzz_common.h"
#include "pramfs.h"

static uint64_t rng;

static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 10;
    rng = argc > 2 ? strtoull(argv[2], NULL, 0) : (uint64_t)time(NULL) * 2654435761u + 1;
    printf("fuzz_region: seed %llu, %d s\n", (unsigned long long)rng, seconds);
    char base[256], work[256];
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(base, sizeof base, "%s/pramfs-fuzz-base-%d.img", dir, getpid());
    snprintf(work, sizeof work, "%s/pramfs-fuzz-%d.img", dir, getpid());
    const size_t len = 128 * PF_BLOCK_SIZE;
    int fd = open(base, O_CREAT | O_TRUNC | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)len) != 0) return 2;
    close(fd);
    struct pf_report rep = {.out = stderr};
    if (pf_mkfs(base, 8 * PF_BLOCK_SIZE, &rep) != 0) return 2;
    /* a seed state with every record kind */
    struct pf_fs *fs = NULL;
    if (pf_open(base, PF_OPEN_NO_MSYNC, &fs, &rep) != 0) return 2;
    struct pf_inode *root = pf_get(fs, PF_ROOT_INO), *d = NULL, *f = NULL, *l = NULL;
    pf_create(fs, root, "dir", S_IFDIR | 0700, 0, 0, NULL, &d);
    pf_create(fs, d, "file", S_IFREG | 0600, 0, 0, NULL, &f);
    static uint8_t data[20000];
    memset(data, 0x42, sizeof data);
    pf_write(fs, f, data, sizeof data, 0);
    pf_commit(fs);
    pf_write(fs, f, data, 5000, 3000); /* a copy-on-write split: several extents */
    pf_create(fs, root, "link", S_IFLNK | 0777, 0, 0, "dir/file", &l);
    pf_link(fs, f, root, "hard");
    pf_commit(fs);
    pf_close(fs);
    uint8_t *img = malloc(len), *mut = malloc(len);
    fd = open(base, O_RDONLY);
    if (read(fd, img, len) != (ssize_t)len) return 2;
    close(fd);
    if (argc > 2 && strcmp(argv[1], "--write-seed") == 0) {
        fd = open(argv[2], O_CREAT | O_TRUNC | O_WRONLY, 0600);
        int ok = fd >= 0 && write(fd, img, len) == (ssize_t)len;
        if (fd >= 0)
            close(fd);
        unlink(base);
        free(img);
        free(mut);
        return ok ? 0 : 2;
    }
    FILE *null = fopen("/dev/null", "w");
    /* Regressions found by this fuzzer, replayed first:
     * 1. a checksummed record with inode number 0xFFFFFFF0 made the inode table 32 GiB (ASan OOM). */
    {
        memcpy(mut, img, len);
        struct pf_sb *sb = (struct pf_sb *)(mut + (((struct pf_sb *)mut)->generation > ((struct pf_sb *)(mut + PF_BLOCK_SIZE))->generation ? 0 : PF_BLOCK_SIZE));
        uint64_t huge = 0xFFFFFFF0u;
        memcpy(mut + sb->meta_block * PF_BLOCK_SIZE + 64 + 8, &huge, 8);
        reseal(mut, len);
        fd = open(work, O_CREAT | O_TRUNC | O_RDWR, 0600);
        if (fd < 0 || write(fd, mut, len) != (ssize_t)len) return 2;
        close(fd);
        int c = pf_fsck(work, false, null);
        if (c != PF_FSCK_CORRUPT) {
            fprintf(stderr, "fuzz_region: regression 1 (huge inode number): fsck exit %d, want 2\n", c);
            return 1;
        }
    }
    time_t end = time(NULL) + seconds;
    long runs = 0, codes[5] = {0}; /* [1]: repaired by -r; [3]: -r runs that did not repair */
    while (time(NULL) < end) {
        memcpy(mut, img, len);
        int flips = 1 + (int)(next() % 8);
        for (int k = 0; k < flips; k++) {
            size_t pos;
            switch (next() % 4) {
            case 0: pos = next() % len; break;                                /* anywhere */
            case 1: pos = next() % (2 * PF_BLOCK_SIZE); break;                /* superblocks */
            default: pos = (2 + (next() % 2) * 8) * PF_BLOCK_SIZE + next() % 512; /* used part of a metadata area */
            }
            switch (next() % 4) {
            case 0: mut[pos] ^= (uint8_t)(1u << (next() % 8)); break;
            case 1: mut[pos] = (uint8_t)next(); break;
            case 2: mut[pos] = 0; break;
            default: mut[pos] = 0xff; break;
            }
        }
        if (next() % 2)
            reseal(mut, len);
        fd = open(work, O_CREAT | O_TRUNC | O_RDWR, 0600);
        if (fd < 0 || write(fd, mut, len) != (ssize_t)len) return 2;
        close(fd);
        int c = pf_fsck(work, false, null);
        codes[c <= 4 ? c : 3]++;
        int c2 = pf_fsck(work, true, null);
        codes[c2 == PF_FSCK_REPAIRED ? 1 : 3]++;
        if (c2 == PF_FSCK_REPAIRED && pf_fsck(work, false, null) != PF_FSCK_CLEAN) {
            fprintf(stderr, "fuzz_region: not clean after repair (run %ld); image kept at %s\n", runs, work);
            return 1;
        }
        runs++;
    }
    fclose(null);
    unlink(base);
    unlink(work);
    free(img);
    free(mut);
    printf("fuzz_region: %ld runs, fsck exit codes: check: clean %ld, corrupt %ld, cannot check %ld; repaired by -r: %ld; no crash\n",
           runs, codes[0], codes[2], codes[4], codes[1]);
    return 0;
}
