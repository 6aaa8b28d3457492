/* libpramfs.so: the stable C API of PramFS for other languages (.NET P/Invoke).
 *
 * Rules of the ABI (version PRAMFS_API_VERSION):
 * - Only fixed-size structs with explicit padding; the caller sets struct_size
 *   to sizeof the struct it was compiled against, the library fills at most that
 *   many bytes and refuses a size smaller than version 1's.
 * - Functions return 0 (or a PRAMFS_FSCK_* code) on success and a negative errno
 *   on failure; pramfs_last_error() then says what failed and why (per thread).
 * - No callbacks, no memory the caller must free except the handle (pramfs_close).
 * - A handle names a region set; it holds no lock or mapping between calls, so
 *   the daemon and the tool may use the regions in between. Every call maps the
 *   regions, works and unmaps them (fsck repair takes the exclusive lock the
 *   daemon takes: it fails with -EBUSY while the regions are mounted).
 * - Not for concurrent use of one handle from several threads. */
#ifndef PRAMFS_API_H
#define PRAMFS_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PRAMFS_BUILDING_API)
#define PRAMFS_EXPORT __attribute__((visibility("default")))
#else
#define PRAMFS_EXPORT
#endif

#define PRAMFS_API_VERSION 1

/* fsck results (the same numbers as the exit codes of `pramfs fsck`). */
#define PRAMFS_FSCK_CLEAN 0
#define PRAMFS_FSCK_REPAIRED 1
#define PRAMFS_FSCK_CORRUPT 2
#define PRAMFS_FSCK_ERROR 4

/* pramfs_fsck modes */
#define PRAMFS_FSCK_CHECK_ONLY 0u
#define PRAMFS_FSCK_REPAIR 1u

typedef struct pramfs_handle pramfs_handle;

/* 208 bytes. */
struct pramfs_info {
    uint32_t struct_size;         /* in: sizeof(struct pramfs_info) */
    uint32_t format_version;
    uint8_t uuid[16];             /* file-system uuid, bytes in on-region order */
    uint64_t generation;          /* of the state in use (the newest intact one) */
    uint64_t size_bytes;          /* total of all regions */
    uint32_t block_size;
    uint32_t region_count;
    uint64_t data_blocks;         /* blocks for file data (regions minus superblocks and metadata areas) */
    uint64_t free_blocks;
    uint64_t free_bytes;          /* free_blocks * block_size */
    uint64_t inodes;              /* in use, root included */
    uint64_t files;
    uint64_t directories;
    uint64_t symlinks;
    uint64_t file_bytes;          /* sum of regular file sizes */
    uint64_t metadata_area_bytes; /* capacity of each of the two metadata areas */
    uint64_t metadata_bytes;      /* bytes of the committed metadata */
    int64_t created_ns;           /* mkfs time, ns since the epoch */
    int64_t committed_ns;         /* last commit, ns since the epoch */
    uint8_t reserved[64];         /* zero */
};

/* 1088 bytes. */
struct pramfs_fsck_result {
    uint32_t struct_size;         /* in: sizeof(struct pramfs_fsck_result) */
    int32_t status;               /* PRAMFS_FSCK_* (also the return value) */
    int32_t problems;             /* errors found (before a repair) */
    int32_t notes;                /* harmless findings, e.g. an interrupted commit */
    uint64_t generation;          /* checked state; after a repair the new one */
    uint64_t inodes;
    uint64_t file_bytes;
    uint8_t reserved[24];         /* zero */
    char first_problem[1024];     /* NUL-terminated; the first problem, or why it could not check; "" if clean */
};

/* PRAMFS_API_VERSION of the loaded library. */
PRAMFS_EXPORT int32_t pramfs_api_version(void);

/* Names the region set REGIONS (a file or block device; several comma-separated,
 * in mkfs order). Checks each is a readable regular file or block device; does
 * not read the file system. 0 or -errno. */
PRAMFS_EXPORT int32_t pramfs_open(const char *regions, pramfs_handle **out);

/* Closes a handle (NULL is fine). */
PRAMFS_EXPORT void pramfs_close(pramfs_handle *h);

/* Reads the superblock and metadata of the newest intact state (read-only; metadata
 * checksums verified, data checksums not). 0 or -errno (-EUCLEAN: damaged, run fsck). */
PRAMFS_EXPORT int32_t pramfs_info(pramfs_handle *h, struct pramfs_info *info);

/* Checks every checksum and the structure; with PRAMFS_FSCK_REPAIR drops what cannot
 * be trusted and commits. Returns a PRAMFS_FSCK_* status (>= 0) or -errno for bad
 * arguments. REPORT (may be NULL) receives the report `pramfs fsck` prints, one
 * finding per line, NUL-terminated and cut to REPORT_SIZE. */
PRAMFS_EXPORT int32_t pramfs_fsck(pramfs_handle *h, uint32_t mode, struct pramfs_fsck_result *result, char *report,
                                  size_t report_size);

/* Copies the last error of this thread (NUL-terminated, cut to SIZE) and returns its
 * full length; "" when the last call succeeded. */
PRAMFS_EXPORT size_t pramfs_last_error(char *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif
