/* Crash-test workload: writes files with content derived from their index,
 * each through NAME.tmp + fsync + rename + fsync(dir), and logs a name only
 * after it is durable. "verify" checks the state found after a kill -9 of the
 * daemon: every logged file complete, every other file complete or a correct
 * prefix (.tmp), nothing else. Also rewrites a scratch file in place so that
 * copy-on-write of committed blocks happens under the kill. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

static uint64_t size_of(unsigned idx, uint64_t seed) { return 1 + mix(idx * 0x9E3779B97F4A7C15ULL ^ seed) % (3u << 20); }

static void fill(unsigned idx, uint64_t seed, uint64_t off, uint8_t *buf, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        uint64_t pos = off + k;
        buf[k] = (uint8_t)(mix((pos / 8) ^ ((uint64_t)idx << 40) ^ seed) >> (8 * (pos % 8)));
    }
}

static int write_all(int fd, const uint8_t *b, size_t n, off_t off)
{
    while (n) {
        ssize_t w = pwrite(fd, b, n, off);
        if (w <= 0)
            return -1;
        b += w; n -= (size_t)w; off += w;
    }
    return 0;
}

static int do_write(const char *dir, const char *log, uint64_t seed)
{
    static uint8_t buf[1 << 20];
    FILE *lf = fopen(log, "a");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (!lf || dfd < 0)
        return 2;
    unsigned first = 0;
    { /* continue numbering after what is there */
        FILE *r = fopen(log, "r");
        char name[64];
        unsigned i;
        while (r && fscanf(r, "%63s", name) == 1)
            if (sscanf(name, "f%u", &i) == 1 && i + 1 > first)
                first = i + 1;
        if (r) fclose(r);
    }
    for (unsigned idx = first;; idx++) {
        char tmp[4096], fin[4096];
        snprintf(tmp, sizeof tmp, "%s/f%06u.tmp", dir, idx);
        snprintf(fin, sizeof fin, "%s/f%06u", dir, idx);
        int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY, 0600);
        if (fd < 0)
            return 1;
        uint64_t size = size_of(idx, seed);
        for (uint64_t off = 0; off < size;) {
            size_t n = size - off < sizeof buf ? (size_t)(size - off) : sizeof buf;
            fill(idx, seed, off, buf, n);
            if (write_all(fd, buf, n, (off_t)off))
                return 1;
            off += n;
        }
        if (fsync(fd) || close(fd) || rename(tmp, fin) || fsync(dfd))
            return 1;
        fprintf(lf, "f%06u\n", idx);
        fflush(lf);
        fsync(fileno(lf));
        /* in-place rewrites of committed blocks: copy-on-write under the kill */
        char scratch[4096];
        snprintf(scratch, sizeof scratch, "%s/scratch", dir);
        int s = open(scratch, O_CREAT | O_RDWR, 0600);
        if (s < 0)
            return 1;
        fill(idx, seed ^ 1, 0, buf, 300000);
        if (write_all(s, buf, 300000, (off_t)(idx % 7) * 4000))
            return 1;
        if (idx % 3 == 0 && ftruncate(s, (off_t)(idx % 5) * 100000))
            return 1;
        if (idx % 2 == 0)
            fsync(s);
        close(s);
    }
}

static int check_file(const char *path, unsigned idx, uint64_t seed, bool whole)
{
    static uint8_t want[1 << 16], got[1 << 16];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "verify: %s: %s\n", path, strerror(errno));
        return 1;
    }
    struct stat st;
    fstat(fd, &st);
    uint64_t size = size_of(idx, seed);
    if ((whole && (uint64_t)st.st_size != size) || (uint64_t)st.st_size > size) {
        fprintf(stderr, "verify: %s: size %lld, expected %s%llu\n", path, (long long)st.st_size, whole ? "" : "at most ",
                (unsigned long long)size);
        close(fd);
        return 1;
    }
    for (uint64_t off = 0; off < (uint64_t)st.st_size;) {
        ssize_t n = pread(fd, got, sizeof got, (off_t)off);
        if (n <= 0) {
            fprintf(stderr, "verify: %s: read error at %llu\n", path, (unsigned long long)off);
            close(fd);
            return 1;
        }
        fill(idx, seed, off, want, (size_t)n);
        if (memcmp(want, got, (size_t)n) != 0) {
            fprintf(stderr, "verify: %s: content differs near offset %llu\n", path, (unsigned long long)off);
            close(fd);
            return 1;
        }
        off += (uint64_t)n;
    }
    close(fd);
    return 0;
}

static int do_verify(const char *dir, const char *log, uint64_t seed)
{
    int bad = 0, logged = 0, present = 0;
    FILE *lf = fopen(log, "r");
    char name[64], path[4096];
    unsigned idx;
    while (lf && fscanf(lf, "%63s", name) == 1) {
        if (sscanf(name, "f%u", &idx) != 1)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, name);
        bad |= check_file(path, idx, seed, true);
        logged++;
    }
    if (lf) fclose(lf);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "scratch") == 0)
            continue;
        char tail[16] = "";
        if (sscanf(e->d_name, "f%u%15s", &idx, tail) < 1 || (tail[0] && strcmp(tail, ".tmp") != 0)) {
            fprintf(stderr, "verify: unexpected entry %s\n", e->d_name);
            bad = 1;
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        bad |= check_file(path, idx, seed, tail[0] == 0);
        present++;
    }
    if (d) closedir(d);
    printf("verify: %d logged, %d present, %s\n", logged, present, bad ? "PROBLEMS" : "all complete or absent");
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: crashwriter write|verify DIR LOGFILE SEED\n");
        return 2;
    }
    uint64_t seed = strtoull(argv[4], NULL, 0);
    return strcmp(argv[1], "write") == 0 ? do_write(argv[2], argv[3], seed) : do_verify(argv[2], argv[3], seed);
}
