/* On-region structures of PramFS format version 1 (FORMAT.md is the reference).
 * All integers are little-endian; the code targets little-endian hosts only. */
#ifndef PRAMFS_FORMAT_H
#define PRAMFS_FORMAT_H

#include <assert.h>
#include <stdint.h>

#include "pramfs.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the on-region format is little-endian");

#define PF_SB_MAGIC "PRAMFSSB"
#define PF_RG_MAGIC "PRAMFSRG"
#define PF_META_MAGIC "PRAMMETA"

struct pf_sb_region {
    uint64_t phys_base;
    uint64_t length;
    uint64_t first_block;
    uint64_t nblocks;
    uint8_t uuid[16];
};
static_assert(sizeof(struct pf_sb_region) == 48, "region entry size");

struct pf_sb {
    char magic[8];
    uint32_t version;
    uint32_t block_size;
    uint8_t uuid[16];
    uint64_t generation;
    uint64_t size;
    uint64_t total_blocks;
    uint32_t region_count;
    uint32_t slot;
    uint64_t meta_area[2];
    uint64_t meta_area_blocks;
    uint64_t meta_block;
    uint64_t meta_len;
    uint32_t meta_crc;
    uint32_t reserved0;
    int64_t commit_ns;
    int64_t created_ns;
    struct pf_sb_region regions[PF_MAX_REGIONS];
    uint8_t reserved[4092 - 896];
    uint32_t crc;
};
static_assert(sizeof(struct pf_sb) == PF_BLOCK_SIZE, "superblock size");
static_assert(__builtin_offsetof(struct pf_sb, regions) == 128, "region table offset");

struct pf_rg_header {
    char magic[8];
    uint32_t version;
    uint32_t index;
    uint8_t fs_uuid[16];
    uint8_t uuid[16];
    uint64_t length;
    uint64_t first_block;
    uint64_t nblocks;
    uint8_t reserved[4092 - 72];
    uint32_t crc;
};
static_assert(sizeof(struct pf_rg_header) == PF_BLOCK_SIZE, "region header size");

struct pf_meta_header {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t generation;
    uint64_t blob_len;
    uint64_t inode_count;
    uint64_t root_ino;
    uint8_t reserved[12];
    uint32_t crc;
};
static_assert(sizeof(struct pf_meta_header) == 64, "metadata header size");

struct pf_rec_inode {
    uint32_t rec_len;
    uint32_t count;
    uint64_t ino;
    uint32_t mode, uid, gid, nlink;
    uint64_t size;
    int64_t atime, mtime, ctime;
};
static_assert(sizeof(struct pf_rec_inode) == 64, "inode record size");

struct pf_rec_extent {
    uint64_t fblock;
    uint64_t dblock;
    uint32_t nblocks;
    uint32_t crc;
};
static_assert(sizeof(struct pf_rec_extent) == 24, "extent record size");

#define PF_DIRENT_FIXED 10 /* u64 ino + u16 name length, then the name */
#define PF_MAX_INO 0xFFFFFFFFull

#endif
