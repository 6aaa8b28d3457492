/* Drives libpramfs.so through its public API only (include/pramfs_api.h), as
 * .NET does, and compares it with the pramfs tool: info field by field against
 * `pramfs info`, fsck on a clean region, on damaged metadata (check, then
 * repair), on a locked region, and bad arguments.
 * usage: api_check PRAMFS REGION MULTI_REGIONS
 * REGION holds 2 files (350000 bytes), 1 directory and 1 symlink (api.sh);
 * MULTI_REGIONS is a freshly formatted set of 2 regions. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pramfs_api.h"

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

static const char *tool;

/* The value of "KEY: value" in `pramfs info REGIONS`. */
static char *tool_info(const char *regions, const char *key)
{
    static char value[256];
    char cmd[1024], line[512];
    snprintf(cmd, sizeof cmd, "'%s' info '%s'", tool, regions);
    FILE *p = popen(cmd, "r");
    value[0] = 0;
    size_t kl = strlen(key);
    while (p && fgets(line, sizeof line, p))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            snprintf(value, sizeof value, "%s", line + kl + 2);
            value[strcspn(value, "\n")] = 0;
        }
    if (p)
        pclose(p);
    return value;
}

static uint64_t tool_u64(const char *regions, const char *key)
{
    const char *v = tool_info(regions, key);
    CHECK(v[0] != 0);
    return strtoull(v, NULL, 10);
}

static int tool_fsck(const char *regions)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' fsck '%s' >/dev/null", tool, regions);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void uuid_text(const uint8_t *u, char *s)
{
    int o = 0;
    for (int i = 0; i < 16; i++)
        o += sprintf(s + o, "%s%02x", i == 4 || i == 6 || i == 8 || i == 10 ? "-" : "", u[i]);
}

static char *last_error(void)
{
    static char e[1024];
    pramfs_last_error(e, sizeof e);
    return e;
}

static struct pramfs_info info_of(pramfs_handle *h, int32_t *rc)
{
    struct pramfs_info i;
    memset(&i, 0xee, sizeof i);
    i.struct_size = sizeof i;
    *rc = pramfs_info(h, &i);
    return i;
}

static int32_t fsck(pramfs_handle *h, uint32_t mode, struct pramfs_fsck_result *r, char *report, size_t n)
{
    memset(r, 0xee, sizeof *r);
    r->struct_size = sizeof *r;
    return pramfs_fsck(h, mode, r, report, n);
}

static void flip(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    uint8_t b = 0;
    CHECK(fd >= 0 && pread(fd, &b, 1, at) == 1);
    b ^= 0x5a;
    CHECK(pwrite(fd, &b, 1, at) == 1);
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: api_check PRAMFS REGION MULTI_REGIONS\n");
        return 2;
    }
    tool = argv[1];
    const char *region = argv[2], *multi = argv[3];
    CHECK(pramfs_api_version() == PRAMFS_API_VERSION);

    /* Bad arguments: a negative errno and a message naming what failed. */
    pramfs_handle *h = (pramfs_handle *)1;
    CHECK(pramfs_open("/nonexistent/region.img", &h) == -ENOENT && h == NULL);
    CHECK(strstr(last_error(), "/nonexistent/region.img") && strstr(last_error(), "No such file"));
    CHECK(pramfs_open("/", &h) == -EINVAL && strstr(last_error(), "neither a regular file nor a block device"));
    CHECK(pramfs_open("", &h) == -EINVAL);
    CHECK(pramfs_open(region, NULL) == -EINVAL);

    CHECK(pramfs_open(region, &h) == 0 && h != NULL);
    CHECK(last_error()[0] == 0);
    struct pramfs_info small = {.struct_size = 16};
    CHECK(pramfs_info(h, &small) == -EINVAL && strstr(last_error(), "struct_size"));

    /* info: every field as `pramfs info` prints it. */
    int32_t rc;
    struct pramfs_info i = info_of(h, &rc);
    CHECK(rc == 0);
    char u[40];
    uuid_text(i.uuid, u);
    CHECK(strcmp(u, tool_info(region, "uuid")) == 0);
    CHECK(i.struct_size == sizeof i);
    CHECK(i.format_version == tool_u64(region, "format_version") && i.format_version == 1);
    CHECK(i.generation == tool_u64(region, "generation"));
    CHECK(i.size_bytes == tool_u64(region, "size"));
    CHECK(i.block_size == 4096 && i.region_count == 1);
    CHECK(i.data_blocks == tool_u64(region, "data_blocks"));
    CHECK(i.free_blocks == tool_u64(region, "free_blocks") && i.free_bytes == i.free_blocks * 4096);
    CHECK(i.inodes == tool_u64(region, "inodes") && i.inodes == 5);
    CHECK(i.files == 2 && i.directories == 2 && i.symlinks == 1 && i.file_bytes == 350000);
    CHECK(i.metadata_area_bytes == tool_u64(region, "metadata_area_bytes"));
    CHECK(i.metadata_bytes == tool_u64(region, "metadata_bytes"));
    CHECK((uint64_t)i.created_ns == tool_u64(region, "created_ns") && i.created_ns > 0);
    CHECK((uint64_t)i.committed_ns == tool_u64(region, "committed_ns") && i.committed_ns >= i.created_ns);
    uint8_t zero[sizeof i.reserved] = {0};
    CHECK(memcmp(i.reserved, zero, sizeof zero) == 0);

    /* fsck of a clean region: the tool's report, every checksum verified. */
    struct pramfs_fsck_result r;
    char report[4096];
    CHECK(fsck(h, PRAMFS_FSCK_CHECK_ONLY, &r, report, sizeof report) == PRAMFS_FSCK_CLEAN);
    CHECK(r.status == PRAMFS_FSCK_CLEAN && r.problems == 0 && r.first_problem[0] == 0);
    CHECK(r.generation == i.generation && r.inodes == 5 && r.file_bytes == 350000);
    CHECK(strstr(report, "clean") && strstr(report, "every checksum verified"));
    CHECK(fsck(h, 7, &r, NULL, 0) == -EINVAL);
    char tiny[8];
    CHECK(fsck(h, PRAMFS_FSCK_CHECK_ONLY, &r, tiny, sizeof tiny) == PRAMFS_FSCK_CLEAN && strlen(tiny) == 7);

    /* A region someone holds exclusively (a mounted daemon): cannot check, and says why. */
    int lockfd = open(region, O_RDONLY);
    CHECK(lockfd >= 0 && flock(lockfd, LOCK_EX) == 0);
    CHECK(fsck(h, PRAMFS_FSCK_CHECK_ONLY, &r, NULL, 0) == PRAMFS_FSCK_ERROR);
    CHECK(strstr(r.first_problem, "in use") && strstr(last_error(), "in use"));
    info_of(h, &rc);
    CHECK(rc == -EBUSY);
    close(lockfd);

    /* One flipped byte in the active state's first inode record. */
    uint64_t gen = i.generation;
    off_t meta = (off_t)((2 + (gen % 2) * (i.metadata_area_bytes / 4096)) * 4096);
    flip(region, meta + 64 + 20);
    CHECK(fsck(h, PRAMFS_FSCK_CHECK_ONLY, &r, report, sizeof report) == PRAMFS_FSCK_CORRUPT);
    CHECK(r.status == PRAMFS_FSCK_CORRUPT && r.problems > 0);
    CHECK(strstr(r.first_problem, "checksum") != NULL);
    CHECK(strstr(report, "pramfs fsck -r") != NULL);
    CHECK(tool_fsck(region) == PRAMFS_FSCK_CORRUPT);
    info_of(h, &rc);
    CHECK(rc == -EUCLEAN && strstr(last_error(), "run fsck"));
    CHECK(fsck(h, PRAMFS_FSCK_REPAIR, &r, report, sizeof report) == PRAMFS_FSCK_REPAIRED);
    CHECK(r.problems > 0 && strstr(report, "repaired"));
    CHECK(r.generation == gen); /* the previous state (gen - 1) committed again replaces the damaged one */
    CHECK(fsck(h, PRAMFS_FSCK_CHECK_ONLY, &r, NULL, 0) == PRAMFS_FSCK_CLEAN);
    CHECK(tool_fsck(region) == PRAMFS_FSCK_CLEAN);
    i = info_of(h, &rc);
    CHECK(rc == 0 && i.generation == r.generation && i.generation == tool_u64(region, "generation"));
    pramfs_close(h);
    pramfs_close(NULL);

    /* Several regions, comma-separated. */
    CHECK(pramfs_open(multi, &h) == 0);
    i = info_of(h, &rc);
    CHECK(rc == 0 && i.region_count == 2 && i.region_count == tool_u64(multi, "regions"));
    CHECK(i.size_bytes == tool_u64(multi, "size") && i.free_blocks == tool_u64(multi, "free_blocks"));
    CHECK(i.inodes == 1 && i.directories == 1 && i.files == 0);
    CHECK(fsck(h, PRAMFS_FSCK_CHECK_ONLY, &r, NULL, 0) == PRAMFS_FSCK_CLEAN);
    pramfs_close(h);

    if (failures) {
        fprintf(stderr, "api_check: %d failure(s)\n", failures);
        return 1;
    }
    printf("api_check: ok\n");
    return 0;
}
