/* libFuzzer target for everything that parses the on-region format: the input
 * is a region image (superblocks, region table, metadata records, directory
 * entries, extents). Its first byte chooses whether the checksums are
 * recomputed first (to reach the parsers behind them) and whether fsck also
 * repairs. The image goes to a memfd that fsck opens as /proc/self/fd/N, as it
 * would any region. Built with clang -fsanitize=fuzzer,address,undefined. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "format.h"
#include "fuzz_common.h"
#include "pramfs.h"

enum { MIN_BLOCKS = 16, MAX_BLOCKS = 256 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 + MIN_BLOCKS * PF_BLOCK_SIZE)
        return 0;
    uint8_t mode = data[0];
    size_t len = (size - 1) / PF_BLOCK_SIZE * PF_BLOCK_SIZE;
    if (len > MAX_BLOCKS * PF_BLOCK_SIZE)
        len = MAX_BLOCKS * PF_BLOCK_SIZE;
    uint8_t *img = malloc(len);
    memcpy(img, data + 1, len);
    if (mode & 1)
        reseal(img, len);

    int fd = memfd_create("pramfs-fuzz", MFD_CLOEXEC);
    if (fd < 0 || write(fd, img, len) != (ssize_t)len)
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    static FILE *null;
    if (!null)
        null = fopen("/dev/null", "w");
    int c = pf_fsck(path, false, null);
    if (c != PF_FSCK_CLEAN && c != PF_FSCK_CORRUPT && c != PF_FSCK_ERROR)
        abort();
    if (mode & 2) {
        int r = pf_fsck(path, true, null);
        if (r == PF_FSCK_REPAIRED && pf_fsck(path, false, null) != PF_FSCK_CLEAN)
            abort(); /* a repair must leave a clean file system */
    }
    close(fd);
    free(img);
    return 0;
}
