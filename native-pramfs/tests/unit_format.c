/* Library-level tests of libpramfs without FUSE: CRC32C, commit and reload,
 * copy-on-write (an uncommitted overwrite never reaches the committed state),
 * an interrupted commit (torn superblock) falling back to the previous state. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pramfs.h"

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

static char region[256];

static struct pf_fs *open_ok(void)
{
    struct pf_report rep = {.out = stderr};
    struct pf_fs *fs = NULL;
    int rc = pf_open(region, PF_OPEN_NO_MSYNC, &fs, &rep);
    CHECK(rc == 0);
    return fs;
}

static void read_all(struct pf_fs *fs, struct pf_inode *i, uint8_t *out, size_t n)
{
    struct iovec iov[600];
    size_t total, done = 0;
    while (done < n) {
        int k = pf_read_iov(fs, i, n - done, done, iov, 600, &total);
        CHECK(total > 0);
        if (!total) return;
        for (int j = 0; j < k; j++) { memcpy(out + done, iov[j].iov_base, iov[j].iov_len); done += iov[j].iov_len; }
    }
}

int main(void)
{
    CHECK(pf_crc32c(0, "123456789", 9) == 0xE3069283u); /* the CRC32C check value */
    /* Both implementations agree (the faster one is chosen at run time), at any length and alignment. */
    {
        static uint8_t data[70000];
        for (size_t k = 0; k < sizeof data; k++)
            data[k] = (uint8_t)(k * 2654435761u >> 13);
        CHECK(pf_crc32c_with(PF_CRC_HW, 0, "123456789", 9) == 0xE3069283u);
        CHECK(pf_crc32c_with(PF_CRC_SOFT, 0, "123456789", 9) == 0xE3069283u);
        static const size_t lens[] = {0, 1, 4, 13, 40, 364, 3280, 12287, 12288, 12289, 24576 + 5, 29524, 65536, 69991};
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
            for (size_t at = 0; at < 9; at += 4)
                CHECK(pf_crc32c_with(PF_CRC_HW, 0x1234, data + at, lens[l]) ==
                      pf_crc32c_with(PF_CRC_SOFT, 0x1234, data + at, lens[l]));
        CHECK(pf_crc32c_impl() == PF_CRC_HW || pf_crc32c_impl() == PF_CRC_SOFT);
    }
    snprintf(region, sizeof region, "%s/pramfs-unit-%d.img", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", getpid());
    int fd = open(region, O_CREAT | O_TRUNC | O_RDWR, 0600);
    CHECK(fd >= 0 && ftruncate(fd, 32 << 20) == 0);
    close(fd);
    struct pf_report rep = {.out = stderr};
    CHECK(pf_mkfs(region, 0, &rep) == 0);

    enum { N = 3 * 4096 * 25 + 123 };
    uint8_t *a = malloc(N), *b = malloc(N), *got = malloc(N);
    for (size_t k = 0; k < N; k++) { a[k] = (uint8_t)(k * 7 + 3); b[k] = (uint8_t)(k * 13 + 1); }

    /* commit and reload */
    struct pf_fs *fs = open_ok();
    struct pf_inode *root = pf_get(fs, PF_ROOT_INO), *f = NULL, *d = NULL;
    CHECK(pf_create(fs, root, "dir", S_IFDIR | 0700, 0, 0, NULL, &d) == 0);
    CHECK(pf_create(fs, d, "file", S_IFREG | 0600, 7, 8, NULL, &f) == 0);
    CHECK(pf_write(fs, f, a, N, 0) == N);
    CHECK(pf_commit(fs) == 0);
    pf_close(fs);
    fs = open_ok();
    d = pf_lookup(fs, pf_get(fs, PF_ROOT_INO), "dir");
    f = d ? pf_lookup(fs, d, "file") : NULL;
    CHECK(f && f->size == N && f->uid == 7 && f->gid == 8);
    if (f) { read_all(fs, f, got, N); CHECK(memcmp(got, a, N) == 0); }

    /* overwrite without commit, then "crash" (close without committing): the old content stays */
    if (f) {
        CHECK(pf_write(fs, f, b + 5000, 60000, 5000) == 60000);
        CHECK(pf_truncate(fs, f, 1000) == 0);
        struct pf_inode *g = NULL;
        CHECK(pf_create(fs, d, "uncommitted", S_IFREG | 0600, 0, 0, NULL, &g) == 0);
    }
    pf_close(fs);
    fs = open_ok();
    d = pf_lookup(fs, pf_get(fs, PF_ROOT_INO), "dir");
    f = d ? pf_lookup(fs, d, "file") : NULL;
    CHECK(f && f->size == N);
    CHECK(d && !pf_lookup(fs, d, "uncommitted"));
    if (f) { read_all(fs, f, got, N); CHECK(memcmp(got, a, N) == 0); }

    /* overwrite with commit: the new content, in place where it was written */
    if (f) {
        CHECK(pf_write(fs, f, b + 5000, 60000, 5000) == 60000);
        CHECK(pf_commit(fs) == 0);
    }
    pf_close(fs);
    memcpy(a + 5000, b + 5000, 60000);
    /* an interrupted next commit: the newer superblock copy torn -> the last good state */
    fs = open_ok();
    f = pf_lookup(fs, pf_lookup(fs, pf_get(fs, PF_ROOT_INO), "dir"), "file");
    if (f) { CHECK(pf_truncate(fs, f, 10) == 0); CHECK(pf_commit(fs) == 0); }
    uint64_t gen = fs->generation;
    pf_close(fs);
    fd = open(region, O_RDWR);
    char junk[100];
    memset(junk, 0xAB, sizeof junk);
    CHECK(pwrite(fd, junk, sizeof junk, (off_t)((gen % 2) * 4096 + 1000)) == sizeof junk);
    close(fd);
    fs = open_ok();
    CHECK(fs && fs->generation == gen - 1);
    f = fs ? pf_lookup(fs, pf_lookup(fs, pf_get(fs, PF_ROOT_INO), "dir"), "file") : NULL;
    CHECK(f && f->size == N);
    if (f) { read_all(fs, f, got, N); CHECK(memcmp(got, a, N) == 0); }
    pf_close(fs);
    FILE *null = fopen("/dev/null", "w");
    CHECK(pf_fsck(region, false, null) == PF_FSCK_CLEAN);

    /* Data checksums computed as whole blocks are appended (write_range): still right
     * after an overwrite of checksummed blocks, a shrink below them, an unaligned
     * append and appends after each of those; fsck checks every data checksum. */
    fs = open_ok();
    struct pf_inode *s1 = NULL, *s2 = NULL;
    CHECK(pf_create(fs, pf_get(fs, PF_ROOT_INO), "stream1", S_IFREG | 0600, 0, 0, NULL, &s1) == 0);
    CHECK(pf_create(fs, pf_get(fs, PF_ROOT_INO), "stream2", S_IFREG | 0600, 0, 0, NULL, &s2) == 0);
    if (s1 && s2) {
        for (int k = 0; k < 8; k++)
            CHECK(pf_write(fs, s1, b + k * 8192, 8192, (uint64_t)k * 8192) == 8192);
        CHECK(s1->next >= 1 && s1->ext[0].crc_blocks > 0); /* checksummed while written */
        CHECK(pf_write(fs, s1, a, 100, 4096 + 7) == 100);   /* inside the checksummed blocks */
        CHECK(pf_write(fs, s1, b, 8192, 65536) == 8192);     /* and appending again */
        for (int k = 0; k < 4; k++)
            CHECK(pf_write(fs, s2, b + k * 4096, 4096, (uint64_t)k * 4096) == 4096);
        CHECK(pf_truncate(fs, s2, 8192) == 0);                /* below the checksummed blocks, */
        CHECK(pf_commit(fs) == 0);                            /* committed right away */
        CHECK(pf_write(fs, s2, b, 8192, 8192) == 8192);
        CHECK(pf_truncate(fs, s2, 5000) == 0);
        CHECK(pf_write(fs, s2, a, 3000, 5000) == 3000);       /* unaligned: the chain stops */
        CHECK(pf_write(fs, s2, b, 8192, 8192) == 8192);
        CHECK(pf_commit(fs) == 0);
        CHECK(pf_write(fs, s2, a, 4096, 16384) == 4096);     /* after a commit: a new extent */
        CHECK(pf_commit(fs) == 0);
    }
    pf_close(fs);
    CHECK(pf_fsck(region, false, null) == PF_FSCK_CLEAN);
    fclose(null);
    unlink(region);
    free(a); free(b); free(got);
    if (failures) { fprintf(stderr, "unit_format: %d failure(s)\n", failures); return 1; }
    printf("unit_format: ok\n");
    return 0;
}
