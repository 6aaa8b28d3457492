/* libpramfs.so: the stable C API (include/pramfs_api.h) over the format code. */
#define _GNU_SOURCE
#define PRAMFS_BUILDING_API
#include "pramfs_api.h"

#include <errno.h>
#include <fcntl.h>
#include <assert.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pramfs.h"

static_assert(sizeof(struct pramfs_info) == 208, "pramfs_info is part of the ABI");
static_assert(sizeof(struct pramfs_fsck_result) == 1088, "pramfs_fsck_result is part of the ABI");

struct pramfs_handle {
    char *regions;
};

static _Thread_local char last_error[1024];

static int32_t fail(int32_t rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int32_t fail(int32_t rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return rc;
}

static int32_t ok(void)
{
    last_error[0] = 0;
    return 0;
}

int32_t pramfs_api_version(void)
{
    return PRAMFS_API_VERSION;
}

int32_t pramfs_open(const char *regions, pramfs_handle **out)
{
    if (!out)
        return fail(-EINVAL, "pramfs_open: out is NULL");
    *out = NULL;
    if (!regions || !regions[0])
        return fail(-EINVAL, "pramfs_open: no region given");
    char *copy = strdup(regions), *save = NULL;
    int n = 0;
    int32_t rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        if (++n > PF_MAX_REGIONS) {
            rc = fail(-EINVAL, "%s: too many regions (at most %d)", regions, PF_MAX_REGIONS);
            break;
        }
        int fd = open(tok, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            int e = errno;
            rc = fail(-e, "cannot open region %s: %s", tok, strerror(e));
        } else if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
            rc = fail(-EINVAL, "region %s is neither a regular file nor a block device", tok);
        }
        if (fd >= 0)
            close(fd);
    }
    free(copy);
    if (!rc && n == 0)
        rc = fail(-EINVAL, "pramfs_open: '%s' names no region", regions);
    if (rc)
        return rc;
    struct pramfs_handle *h = calloc(1, sizeof *h);
    h->regions = strdup(regions);
    *out = h;
    return ok();
}

void pramfs_close(pramfs_handle *h)
{
    if (!h)
        return;
    free(h->regions);
    free(h);
}

int32_t pramfs_info(pramfs_handle *h, struct pramfs_info *info)
{
    if (!h || !info)
        return fail(-EINVAL, "pramfs_info: handle or info is NULL");
    uint32_t size = info->struct_size;
    if (size < sizeof *info)
        return fail(-EINVAL, "pramfs_info: struct_size %u is smaller than version 1's %zu", size, sizeof *info);
    struct pf_info_data d;
    struct pf_report rep = {0};
    int rc = pf_info_read(h->regions, &d, &rep);
    if (rc)
        return fail(rc, "cannot read %s: %s%s", h->regions, rep.first[0] ? rep.first : strerror(-rc),
                    rc == -EUCLEAN ? " (run fsck)" : "");
    memset(info, 0, sizeof *info);
    info->struct_size = (uint32_t)sizeof *info;
    info->format_version = d.format_version;
    memcpy(info->uuid, d.uuid, 16);
    info->generation = d.generation;
    info->size_bytes = d.size;
    info->block_size = d.block_size;
    info->region_count = (uint32_t)d.regions;
    info->data_blocks = d.data_blocks;
    info->free_blocks = d.free_blocks;
    info->free_bytes = d.free_blocks * d.block_size;
    info->inodes = d.inodes;
    info->files = d.files;
    info->directories = d.directories;
    info->symlinks = d.symlinks;
    info->file_bytes = d.file_bytes;
    info->metadata_area_bytes = d.meta_area_bytes;
    info->metadata_bytes = d.meta_bytes;
    info->created_ns = d.created_ns;
    info->committed_ns = d.committed_ns;
    return ok();
}

int32_t pramfs_fsck(pramfs_handle *h, uint32_t mode, struct pramfs_fsck_result *result, char *report,
                    size_t report_size)
{
    if (!h || !result)
        return fail(-EINVAL, "pramfs_fsck: handle or result is NULL");
    if (result->struct_size < sizeof *result)
        return fail(-EINVAL, "pramfs_fsck: struct_size %u is smaller than version 1's %zu", result->struct_size,
                    sizeof *result);
    if (mode != PRAMFS_FSCK_CHECK_ONLY && mode != PRAMFS_FSCK_REPAIR)
        return fail(-EINVAL, "pramfs_fsck: unknown mode %u", mode);
    if (report && report_size)
        report[0] = 0;
    /* The report goes to a memory stream; it is what `pramfs fsck` prints. */
    char *text = NULL;
    size_t len = 0;
    FILE *out = report && report_size ? open_memstream(&text, &len) : NULL;
    struct pf_fsck_summary sum;
    int code = pf_fsck_ex(h->regions, mode == PRAMFS_FSCK_REPAIR, out, &sum);
    if (out) {
        fclose(out);
        snprintf(report, report_size, "%s", text ? text : "");
        free(text);
    }
    memset(result, 0, sizeof *result);
    result->struct_size = (uint32_t)sizeof *result;
    result->status = code;
    result->problems = sum.problems;
    result->notes = sum.notes;
    result->generation = sum.generation;
    result->inodes = sum.inodes;
    result->file_bytes = sum.file_bytes;
    snprintf(result->first_problem, sizeof result->first_problem, "%s", sum.first);
    if (code == PF_FSCK_ERROR)
        fail(0, "cannot check %s: %s", h->regions, sum.first);
    else
        ok();
    return code;
}

size_t pramfs_last_error(char *buf, size_t size)
{
    size_t n = strlen(last_error);
    if (buf && size)
        snprintf(buf, size, "%s", last_error);
    return n;
}
