/* libpramfs: the on-region format of PramFS (see FORMAT.md) and an in-memory
 * file system over it with copy-on-write commits. Used by the pramfs tool
 * (mkfs, mount, fsck, info, ls). Not thread-safe: callers serialise access
 * (the FUSE daemon holds pf_fs.lock around every call). */
#ifndef PRAMFS_H
#define PRAMFS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/uio.h>

#define PF_BLOCK_SIZE 4096u
#define PF_FORMAT_VERSION 1u
#define PF_MAX_REGIONS 16
#define PF_NAME_MAX 255u
#define PF_SYMLINK_MAX 4095u
#define PF_ROOT_INO 1u

/* fsck exit codes (documented in FORMAT.md and `pramfs help`). */
#define PF_FSCK_CLEAN 0
#define PF_FSCK_REPAIRED 1
#define PF_FSCK_CORRUPT 2
#define PF_FSCK_ERROR 4

struct pf_region {
    char *path;
    int fd;
    uint8_t *map;
    uint64_t length;      /* bytes mapped (a multiple of the block size) */
    uint64_t first_block; /* global number of this region's block 0 */
    uint64_t nblocks;
    uint8_t uuid[16];
    uint64_t phys_base;   /* physical address for /dev/pmemN, 0 for a file */
    bool is_blockdev;
};

struct pf_extent {
    uint64_t fblock;   /* first block in the file */
    uint64_t dblock;   /* first global block on the regions */
    uint32_t nblocks;
    uint32_t crc;      /* CRC32C of nblocks * block size bytes */
    bool committed;    /* referenced by the committed state: never written in place */
    bool crc_valid;
    uint32_t crc_blocks; /* not committed: crc already covers the first crc_blocks blocks */
};

struct pf_dirent {
    char *name;
    uint64_t ino;
};

struct pf_inode {
    uint64_t ino;
    uint32_t mode, uid, gid, nlink;
    uint64_t size;
    int64_t atime, mtime, ctime; /* ns since the epoch */
    struct pf_extent *ext;
    size_t next, capext;
    struct pf_dirent *ents;
    size_t nent, capent;
    char *target;
    uint64_t parent;  /* directories: the parent (root: itself) */
    uint64_t lookup;  /* kernel lookup count (FUSE) */
    uint32_t opens;
    uint32_t direct_opens; /* FUSE: open write-only handles (direct I/O, past the kernel's page cache) */
    bool direct_written;   /* FUSE: such a handle was open since the last open for reading */
};

struct pf_fs {
    struct pf_region reg[PF_MAX_REGIONS];
    int nreg;
    uint8_t uuid[16];
    uint64_t generation;
    uint64_t total_blocks;
    uint64_t meta_area[2];
    uint64_t meta_area_blocks;
    int64_t created_ns;
    struct pf_inode **inodes; /* indexed by ino; NULL = free */
    uint64_t ino_cap;
    uint64_t ino_hint;
    uint8_t *bitmap;          /* 1 = block in use (reserved, committed or in use now) */
    uint64_t free_blocks;
    uint64_t alloc_hint;
    uint64_t *pending;        /* blocks of the committed state freed since: reusable after the next commit */
    size_t npending, cappending;
    bool dirty;
    bool readonly;
    bool no_msync;
    pthread_mutex_t lock;
};

/* Diagnostics: the problems a load or fsck found, as lines. */
struct pf_report {
    FILE *out;      /* where lines go (may be NULL) */
    int errors;     /* problems in the active state */
    int notes;      /* harmless findings (e.g. an interrupted commit) */
    int repaired;
    char first[1024]; /* the first error, for messages */
};

void pf_report_error(struct pf_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pf_report_note(struct pf_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

uint32_t pf_crc32c(uint32_t crc, const void *data, size_t len);
#define PF_CRC_HW 1
#define PF_CRC_SOFT 2
/* The implementation pf_crc32c uses (timed once: qemu TCG emulates the instruction slowly). */
int pf_crc32c_impl(void);
/* One implementation (PF_CRC_HW falls back to the tables without SSE4.2); for tests. */
uint32_t pf_crc32c_with(int which, uint32_t crc, const void *data, size_t len);

/* REGIONS is a comma-separated list of region paths (files or block devices). */
int pf_mkfs(const char *regions, uint64_t meta_bytes, struct pf_report *rep);

#define PF_OPEN_RDONLY 1
#define PF_OPEN_NO_MSYNC 2   /* tests of the commit path only; never for real stores */
/* Opens and loads the newest committed state. Refuses a state with any error
 * (run fsck). Returns 0 or -errno; details in rep. */
int pf_open(const char *regions, int flags, struct pf_fs **out, struct pf_report *rep);
void pf_close(struct pf_fs *fs);

/* fsck: checks every checksum and the structure; repair drops what cannot be
 * trusted and commits. Returns a PF_FSCK_* code. */
int pf_fsck(const char *regions, bool repair, FILE *out);
struct pf_fsck_summary {
    int code;            /* PF_FSCK_* */
    int problems;        /* errors found in the state checked */
    int notes;
    uint64_t generation; /* after a repair: the new one */
    uint64_t inodes;
    uint64_t file_bytes;
    char first[1024];    /* the first problem (or why it could not check) */
};
/* pf_fsck with a summary (out may be NULL: no report lines). */
int pf_fsck_ex(const char *regions, bool repair, FILE *out, struct pf_fsck_summary *sum);

struct pf_info_data {
    uint32_t format_version, block_size;
    uint8_t uuid[16];
    uint64_t generation, size, data_blocks, free_blocks;
    uint64_t inodes, files, directories, symlinks, file_bytes;
    uint64_t meta_area_bytes, meta_bytes;
    int64_t created_ns, committed_ns;
    int regions;
};
/* What pramfs info prints, for the newest intact state (read-only; refuses a damaged one). */
int pf_info_read(const char *regions, struct pf_info_data *d, struct pf_report *rep);
int pf_info(const char *regions, FILE *out);
int pf_ls(const char *regions, FILE *out);

/* Commits the in-memory state: new extents checksummed, metadata written to the
 * inactive area, regions synced, then the other superblock copy (generation+1). */
int pf_commit(struct pf_fs *fs);

/* Operations (return 0 / a value >= 0, or -errno). */
struct pf_inode *pf_get(struct pf_fs *fs, uint64_t ino);
struct pf_inode *pf_lookup(struct pf_fs *fs, struct pf_inode *dir, const char *name);
int pf_create(struct pf_fs *fs, struct pf_inode *dir, const char *name, uint32_t mode, uint32_t uid, uint32_t gid,
              const char *target, struct pf_inode **out);
int pf_link(struct pf_fs *fs, struct pf_inode *ino, struct pf_inode *dir, const char *name);
int pf_unlink(struct pf_fs *fs, struct pf_inode *dir, const char *name, bool want_dir);
int pf_rename(struct pf_fs *fs, struct pf_inode *odir, const char *oname, struct pf_inode *ndir, const char *nname,
              unsigned flags);
int pf_truncate(struct pf_fs *fs, struct pf_inode *ino, uint64_t size);
ssize_t pf_write(struct pf_fs *fs, struct pf_inode *ino, const void *buf, size_t len, uint64_t off);
/* Fills iov (at most maxiov entries) with pointers into the regions (zero pages for holes). */
int pf_read_iov(struct pf_fs *fs, struct pf_inode *ino, size_t len, uint64_t off, struct iovec *iov, int maxiov,
                size_t *total);
void pf_maybe_free(struct pf_fs *fs, struct pf_inode *ino);
uint64_t pf_used_inodes(struct pf_fs *fs);
int64_t pf_now(void);
void pf_touch(struct pf_inode *ino, bool m, bool c);

#endif
