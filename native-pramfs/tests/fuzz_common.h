/* Shared by the fuzz targets: recompute every checksum of a (mutated) region
 * image, so mutations get past the CRC checks and reach the parsers behind. */
#ifndef PRAMFS_FUZZ_COMMON_H
#define PRAMFS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "format.h"

static inline void reseal(uint8_t *img, size_t len)
{
    for (int s = 0; s < 2; s++) {
        struct pf_sb *sb = (struct pf_sb *)(img + s * PF_BLOCK_SIZE);
        uint64_t mb = sb->meta_block, ml = sb->meta_len;
        if (mb < len / PF_BLOCK_SIZE && ml <= len - mb * PF_BLOCK_SIZE && ml >= 64) {
            uint8_t *blob = img + mb * PF_BLOCK_SIZE;
            struct pf_meta_header *h = (struct pf_meta_header *)blob;
            h->crc = pf_crc32c(0, h, offsetof(struct pf_meta_header, crc));
            for (size_t off = 64; off + 8 <= ml;) {
                uint32_t rl;
                memcpy(&rl, blob + off, 4);
                if (rl < 8 || rl % 8 || rl > ml - off) break;
                uint32_t c = pf_crc32c(0, blob + off, rl - 4);
                memcpy(blob + off + rl - 4, &c, 4);
                off += rl;
            }
            sb->meta_crc = pf_crc32c(0, blob, ml);
        }
        sb->crc = pf_crc32c(0, sb, offsetof(struct pf_sb, crc));
    }
}

#endif
