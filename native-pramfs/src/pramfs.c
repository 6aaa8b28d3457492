/* libpramfs core: regions, superblocks, metadata (de)serialisation, block
 * allocation, copy-on-write data writes and the commit. FORMAT.md describes
 * the on-region format; the comments here say why the code does what it does. */
#define _GNU_SOURCE
#include "pramfs.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "format.h"

#define BS ((uint64_t)PF_BLOCK_SIZE)

static uint8_t zero_page[1u << 20]; /* holes are read from here (a FUSE read is at most 1 MiB) */

/* ---------- reports ---------- */

static void report_v(struct pf_report *r, bool error, const char *fmt, va_list ap)
{
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    if (!r)
        return;
    if (error) {
        if (r->errors++ == 0)
            snprintf(r->first, sizeof r->first, "%s", line);
    } else {
        r->notes++;
    }
    if (r->out)
        fprintf(r->out, "%s: %s\n", error ? "error" : "note", line);
}

void pf_report_error(struct pf_report *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report_v(r, true, fmt, ap);
    va_end(ap);
}

void pf_report_note(struct pf_report *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report_v(r, false, fmt, ap);
    va_end(ap);
}

int64_t pf_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void pf_touch(struct pf_inode *ino, bool m, bool c)
{
    int64_t now = pf_now();
    if (m)
        ino->mtime = now;
    if (c)
        ino->ctime = now;
}

/* ---------- regions ---------- */

static uint8_t *block_ptr(struct pf_fs *fs, uint64_t b)
{
    for (int i = 0; i < fs->nreg; i++) {
        struct pf_region *r = &fs->reg[i];
        if (b >= r->first_block && b < r->first_block + r->nblocks)
            return r->map + (b - r->first_block) * BS;
    }
    return NULL;
}

static int region_of(struct pf_fs *fs, uint64_t b)
{
    for (int i = 0; i < fs->nreg; i++)
        if (b >= fs->reg[i].first_block && b < fs->reg[i].first_block + fs->reg[i].nblocks)
            return i;
    return -1;
}

/* Physical address of a legacy pmem device, recorded so a later kernel can
 * find the same memory (the region table's "base"). 0 when unknown. */
static uint64_t phys_base_of(const char *path, bool blockdev)
{
    if (!blockdev)
        return 0;
    const char *name = strrchr(path, '/');
    name = name ? name + 1 : path;
    char p[256];
    snprintf(p, sizeof p, "/sys/block/%s/device/resource", name);
    FILE *f = fopen(p, "r");
    if (!f)
        return 0;
    unsigned long long v = 0;
    if (fscanf(f, "%llx", &v) != 1)
        v = 0;
    fclose(f);
    return v;
}

static int map_region(struct pf_region *r, const char *path, bool rdonly, struct pf_report *rep)
{
    r->path = strdup(path);
    r->fd = open(path, (rdonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (r->fd < 0) {
        int e = errno;
        pf_report_error(rep, "cannot open region %s: %s", path, strerror(e));
        return -e;
    }
    /* One writer at a time: a second daemon or an fsck -r on a mounted region would
     * corrupt it. The kernel drops the lock when the holder dies (kill -9 included). */
    if (flock(r->fd, (rdonly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
        int e = errno;
        pf_report_error(rep, "region %s is in use (a pramfs daemon or fsck holds it): %s; unmount it first", path,
                        strerror(e));
        return e == EWOULDBLOCK ? -EBUSY : -e;
    }
    struct stat st;
    if (fstat(r->fd, &st) != 0) {
        int e = errno;
        pf_report_error(rep, "cannot stat region %s: %s", path, strerror(e));
        return -e;
    }
    uint64_t len;
    if (S_ISBLK(st.st_mode)) {
        r->is_blockdev = true;
        if (ioctl(r->fd, BLKGETSIZE64, &len) != 0) {
            int e = errno;
            pf_report_error(rep, "cannot read the size of block device %s: %s", path, strerror(e));
            return -e;
        }
    } else if (S_ISREG(st.st_mode)) {
        len = (uint64_t)st.st_size;
    } else {
        pf_report_error(rep, "region %s is neither a regular file nor a block device", path);
        return -EINVAL;
    }
    len -= len % BS;
    if (len < 16 * BS) {
        pf_report_error(rep, "region %s is too small (%llu bytes; at least %llu needed)", path, (unsigned long long)len,
                        (unsigned long long)(16 * BS));
        return -EINVAL;
    }
    void *m = mmap(NULL, len, rdonly ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        pf_report_error(rep, "cannot map region %s (%llu bytes): %s", path, (unsigned long long)len, strerror(e));
        return -e;
    }
    r->map = m;
    r->length = len;
    r->nblocks = len / BS;
    r->phys_base = phys_base_of(path, r->is_blockdev);
    return 0;
}

static void unmap_regions(struct pf_fs *fs)
{
    for (int i = 0; i < fs->nreg; i++) {
        struct pf_region *r = &fs->reg[i];
        if (r->map)
            munmap(r->map, r->length);
        if (r->fd >= 0)
            close(r->fd);
        free(r->path);
        r->map = NULL;
        r->fd = -1;
        r->path = NULL;
    }
}

static int map_all(struct pf_fs *fs, const char *spec, bool rdonly, struct pf_report *rep)
{
    char *copy = strdup(spec);
    char *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (fs->nreg == PF_MAX_REGIONS) {
            pf_report_error(rep, "too many regions (at most %d)", PF_MAX_REGIONS);
            rc = -EINVAL;
            break;
        }
        struct pf_region *r = &fs->reg[fs->nreg++];
        r->fd = -1;
        rc = map_region(r, tok, rdonly, rep);
        if (rc)
            break;
    }
    free(copy);
    if (!rc && fs->nreg == 0) {
        pf_report_error(rep, "no region given");
        rc = -EINVAL;
    }
    return rc;
}

/* Makes region contents durable: the page cache of a file or /dev/pmemN is not
 * what survives a power cut or a kexec; the region is. */
static int sync_range(struct pf_fs *fs, struct pf_region *r, uint64_t off, uint64_t len)
{
    if (fs->no_msync)
        return 0;
    if (msync(r->map + off, len, MS_SYNC) != 0)
        return -errno;
    return 0;
}

/* ---------- fs object ---------- */

static struct pf_fs *fs_new(void)
{
    struct pf_fs *fs = calloc(1, sizeof *fs);
    for (int i = 0; i < PF_MAX_REGIONS; i++)
        fs->reg[i].fd = -1;
    pthread_mutex_init(&fs->lock, NULL);
    return fs;
}

static void inode_free(struct pf_inode *ino)
{
    if (!ino)
        return;
    for (size_t i = 0; i < ino->nent; i++)
        free(ino->ents[i].name);
    free(ino->ents);
    free(ino->ext);
    free(ino->target);
    free(ino);
}

void pf_close(struct pf_fs *fs)
{
    if (!fs)
        return;
    for (uint64_t i = 0; i < fs->ino_cap; i++)
        inode_free(fs->inodes[i]);
    free(fs->inodes);
    free(fs->bitmap);
    free(fs->pending);
    unmap_regions(fs);
    pthread_mutex_destroy(&fs->lock);
    free(fs);
}

struct pf_inode *pf_get(struct pf_fs *fs, uint64_t ino)
{
    return ino < fs->ino_cap ? fs->inodes[ino] : NULL;
}

static int ensure_ino_cap(struct pf_fs *fs, uint64_t need)
{
    if (need <= fs->ino_cap)
        return 0;
    uint64_t cap = fs->ino_cap ? fs->ino_cap : 64;
    while (cap < need)
        cap *= 2;
    struct pf_inode **n = realloc(fs->inodes, cap * sizeof *n);
    if (!n)
        return -ENOMEM;
    memset(n + fs->ino_cap, 0, (cap - fs->ino_cap) * sizeof *n);
    fs->inodes = n;
    fs->ino_cap = cap;
    return 0;
}

/* Inode numbers stay below the metadata area size / 16 (FORMAT.md): the
 * in-memory table is indexed by them, so a damaged record cannot make it huge. */
static uint64_t max_ino(const struct pf_fs *fs)
{
    uint64_t m = fs->meta_area_blocks * BS / 16;
    return m < PF_MAX_INO ? m : PF_MAX_INO;
}

uint64_t pf_used_inodes(struct pf_fs *fs)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < fs->ino_cap; i++)
        n += fs->inodes[i] != NULL;
    return n;
}

/* ---------- block bitmap ---------- */

static bool bit_get(struct pf_fs *fs, uint64_t b) { return fs->bitmap[b >> 3] & (1u << (b & 7)); }
static void bit_set(struct pf_fs *fs, uint64_t b) { fs->bitmap[b >> 3] |= (uint8_t)(1u << (b & 7)); }
static void bit_clr(struct pf_fs *fs, uint64_t b) { fs->bitmap[b >> 3] &= (uint8_t)~(1u << (b & 7)); }

static void free_run(struct pf_fs *fs, uint64_t start, uint64_t n)
{
    for (uint64_t b = start; b < start + n; b++)
        if (bit_get(fs, b)) {
            bit_clr(fs, b);
            fs->free_blocks++;
        }
}

/* Blocks the committed state still references may only be reused once a newer
 * commit no longer does: until then a crash must find their old content. */
static int defer_free(struct pf_fs *fs, uint64_t start, uint64_t n)
{
    if (fs->npending + 2 > fs->cappending) {
        size_t cap = fs->cappending ? fs->cappending * 2 : 64;
        uint64_t *p = realloc(fs->pending, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        fs->pending = p;
        fs->cappending = cap;
    }
    fs->pending[fs->npending++] = start;
    fs->pending[fs->npending++] = n;
    return 0;
}

uint64_t pf_pending_blocks(struct pf_fs *fs);
uint64_t pf_pending_blocks(struct pf_fs *fs)
{
    uint64_t n = 0;
    for (size_t i = 0; i < fs->npending; i += 2)
        n += fs->pending[i + 1];
    return n;
}

static void release_extent(struct pf_fs *fs, const struct pf_extent *e)
{
    if (e->committed)
        (void)defer_free(fs, e->dblock, e->nblocks); /* on ENOMEM the blocks leak until the next mount */
    else
        free_run(fs, e->dblock, e->nblocks);
}

/* Up to WANT free blocks in one run, never crossing a region boundary. When
 * AT is not UINT64_MAX, only a run starting exactly there. Returns the count. */
static uint64_t alloc_run(struct pf_fs *fs, uint64_t want, uint64_t at, uint64_t *start)
{
    if (fs->free_blocks == 0 || want == 0)
        return 0;
    uint64_t b;
    if (at != UINT64_MAX) {
        if (at >= fs->total_blocks || bit_get(fs, at))
            return 0;
        b = at;
    } else {
        uint64_t tb = fs->total_blocks, i = 0;
        b = fs->alloc_hint < tb ? fs->alloc_hint : 0;
        for (; i < tb; i++, b = (b + 1 == tb) ? 0 : b + 1) {
            if ((b & 7) == 0 && fs->bitmap[b >> 3] == 0xff && b + 8 <= tb) {
                i += 7;
                b += 7;
                if (b + 1 >= tb) b = tb - 1;
                continue;
            }
            if (!bit_get(fs, b))
                break;
        }
        if (i >= tb)
            return 0;
    }
    int r = region_of(fs, b);
    uint64_t limit = fs->reg[r].first_block + fs->reg[r].nblocks;
    uint64_t n = 0;
    while (n < want && b + n < limit && !bit_get(fs, b + n)) {
        bit_set(fs, b + n);
        n++;
    }
    fs->free_blocks -= n;
    fs->alloc_hint = b + n;
    *start = b;
    return n;
}

/* ---------- extents ---------- */

/* Index of the extent holding file block FB, or -1; *ins = where one would go. */
static long find_extent(const struct pf_inode *ino, uint64_t fb, size_t *ins)
{
    size_t lo = 0, hi = ino->next;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const struct pf_extent *e = &ino->ext[mid];
        if (fb < e->fblock)
            hi = mid;
        else if (fb >= e->fblock + e->nblocks)
            lo = mid + 1;
        else
            return (long)mid;
    }
    *ins = lo;
    return -1;
}

static int ext_insert(struct pf_inode *ino, size_t at, const struct pf_extent *e, size_t count)
{
    if (ino->next + count > ino->capext) {
        size_t cap = ino->capext ? ino->capext : 4;
        while (cap < ino->next + count)
            cap *= 2;
        struct pf_extent *n = realloc(ino->ext, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        ino->ext = n;
        ino->capext = cap;
    }
    memmove(&ino->ext[at + count], &ino->ext[at], (ino->next - at) * sizeof *e);
    memcpy(&ino->ext[at], e, count * sizeof *e);
    ino->next += count;
    return 0;
}

static void ext_remove(struct pf_inode *ino, size_t at)
{
    memmove(&ino->ext[at], &ino->ext[at + 1], (ino->next - at - 1) * sizeof(struct pf_extent));
    ino->next--;
}

/* Never commits: a commit in the middle of a write would record extents past
 * the file's size. Writers commit beforehand (make_room) instead. */
static int alloc_or_commit(struct pf_fs *fs, uint64_t want, uint64_t *start, uint64_t *n)
{
    *n = alloc_run(fs, want, UINT64_MAX, start);
    return *n ? 0 : -ENOSPC;
}

/* Space freed since the last commit becomes usable once a commit no longer
 * references it: commit first when a write of LEN bytes might need it. */
static int make_room(struct pf_fs *fs, uint64_t len)
{
    if (fs->npending == 0 || fs->free_blocks > len / BS + 2)
        return 0;
    return pf_commit(fs);
}

/* Replaces file blocks [fb, fb+nb) of committed extent I by fresh blocks: the
 * committed copy stays intact until the next commit stops referencing it. */
static int cow(struct pf_fs *fs, struct pf_inode *ino, size_t i, uint64_t fb, uint64_t nb)
{
    struct pf_extent e = ino->ext[i];
    struct pf_extent pieces[64];
    size_t np = 0;
    uint64_t done = 0;
    int rc = 0;
    while (done < nb) {
        uint64_t s, n;
        if (np == 64) {
            nb = done; /* good enough: the caller loops for the rest */
            break;
        }
        rc = alloc_or_commit(fs, nb - done, &s, &n);
        if (rc)
            break;
        pieces[np++] = (struct pf_extent){fb + done, s, (uint32_t)n, 0, false, false, 0};
        done += n;
    }
    if (rc) {
        for (size_t k = 0; k < np; k++)
            free_run(fs, pieces[k].dblock, pieces[k].nblocks);
        return rc;
    }
    e = ino->ext[i]; /* re-read: still the same extent (commits do not reorder) */
    /* The write covers the interior blocks entirely; only the edges keep old bytes. */
    for (size_t k = 0; k < np; k++) {
        uint64_t first = pieces[k].fblock, last = pieces[k].fblock + pieces[k].nblocks - 1;
        memcpy(block_ptr(fs, pieces[k].dblock), block_ptr(fs, e.dblock + (first - e.fblock)), BS);
        if (last != first)
            memcpy(block_ptr(fs, pieces[k].dblock + pieces[k].nblocks - 1), block_ptr(fs, e.dblock + (last - e.fblock)),
                   BS);
    }
    rc = defer_free(fs, e.dblock + (fb - e.fblock), nb);
    if (rc)
        return rc;
    struct pf_extent repl[66];
    size_t nr = 0;
    if (fb > e.fblock)
        repl[nr++] = (struct pf_extent){e.fblock, e.dblock, (uint32_t)(fb - e.fblock), 0, true, false, 0};
    memcpy(&repl[nr], pieces, np * sizeof *pieces);
    nr += np;
    uint64_t end = e.fblock + e.nblocks;
    if (fb + nb < end)
        repl[nr++] = (struct pf_extent){fb + nb, e.dblock + (fb + nb - e.fblock), (uint32_t)(end - fb - nb), 0, true, false, 0};
    ext_remove(ino, i);
    return ext_insert(ino, i, repl, nr);
}

/* Writes LEN bytes (zeros when SRC is NULL) at OFF; does not change the size.
 * On an error, *reached tells how far it got: blocks are allocated only up to there. */
/* Copies file data into the region at block B + IN_BLOCK (one extent: never across
 * regions). pwrite into the region's file or block device rather than memcpy into
 * the mapping: the same page cache (so the mapping sees it), but the kernel
 * allocates the pages of a sparse file in its write path instead of one page fault
 * per 4 KiB, which made writes about 2x slower. memcpy when pwrite cannot. */
static void copy_in(struct pf_fs *fs, uint64_t b, uint64_t in_block, const uint8_t *src, uint64_t len)
{
    struct pf_region *r = &fs->reg[region_of(fs, b)];
    uint64_t at = (b - r->first_block) * BS + in_block, done = 0;
    while (done < len) {
        ssize_t n = pwrite(r->fd, src + done, len - done, (off_t)(at + done));
        if (n <= 0)
            break;
        done += (uint64_t)n;
    }
    if (done < len)
        memcpy(r->map + at + done, src + done, len - done);
}

static int write_range(struct pf_fs *fs, struct pf_inode *ino, const uint8_t *src, uint64_t len, uint64_t off,
                       uint64_t *reached)
{
    uint64_t pos = off, end = off + len;
    *reached = off;
    uint64_t endblk = (end + BS - 1) / BS;
    while (pos < end) {
        uint64_t fb = pos / BS;
        size_t ins = 0;
        long i = find_extent(ino, fb, &ins);
        if (i >= 0) {
            struct pf_extent *e = &ino->ext[i];
            uint64_t eend = e->fblock + e->nblocks;
            if (e->committed) {
                int rc = cow(fs, ino, (size_t)i, fb, (eend < endblk ? eend : endblk) - fb);
                if (rc)
                    return rc;
                continue;
            }
            uint64_t stop = eend * BS < end ? eend * BS : end;
            uint64_t db = e->dblock + (fb - e->fblock);
            if (fb - e->fblock < e->crc_blocks) {
                e->crc_blocks = 0; /* checksummed blocks change: the commit checksums it all */
                e->crc = 0;
            }
            if (src)
                copy_in(fs, db, pos % BS, src + (pos - off), stop - pos);
            else
                memset(block_ptr(fs, db) + pos % BS, 0, stop - pos);
            /* Appending whole blocks right after the checksummed ones (a stream of
             * large writes): checksum them now, from the caller's buffer while it is
             * in the CPU cache, not at the commit from the region. */
            uint64_t whole = (stop - pos) / BS;
            if (src && whole && pos == (e->fblock + e->crc_blocks) * BS) {
                e->crc = pf_crc32c(e->crc, src + (pos - off), (size_t)(whole * BS));
                e->crc_blocks += (uint32_t)whole;
            }
            pos = stop;
            *reached = pos;
            continue;
        }
        uint64_t holeend = ins < ino->next ? ino->ext[ins].fblock : UINT64_MAX;
        if (holeend > endblk)
            holeend = endblk;
        uint64_t want = holeend - fb;
        if (want > (1u << 30))
            want = 1u << 30;
        uint64_t s = 0, n = 0;
        struct pf_extent *prev = ins > 0 ? &ino->ext[ins - 1] : NULL;
        if (prev && !prev->committed && prev->fblock + prev->nblocks == fb && prev->nblocks + want < (1u << 31))
            n = alloc_run(fs, want, prev->dblock + prev->nblocks, &s);
        if (n) {
            prev->nblocks += (uint32_t)n;
        } else {
            int rc = alloc_or_commit(fs, want, &s, &n);
            if (rc)
                return rc;
            struct pf_extent ne = {fb, s, (uint32_t)n, 0, false, false, 0};
            rc = ext_insert(ino, ins, &ne, 1);
            if (rc) {
                free_run(fs, s, n);
                return rc;
            }
        }
        /* New blocks: zero what this write does not cover (head of the first, tail of the last). */
        if (pos % BS)
            memset(block_ptr(fs, s), 0, pos % BS);
        uint64_t newend = (fb + n) * BS;
        if (end < newend) {
            uint64_t from = end > newend - BS ? end : newend - BS;
            memset(block_ptr(fs, s + n - 1) + (from - (newend - BS)), 0, newend - from);
        }
    }
    return 0;
}

/* Growing a file must show zeros after the old end, also in the old last block. */
static int zero_tail(struct pf_fs *fs, struct pf_inode *ino, uint64_t newsize)
{
    uint64_t s = ino->size;
    if (s % BS == 0 || newsize <= s)
        return 0;
    size_t ins;
    if (find_extent(ino, s / BS, &ins) < 0)
        return 0;
    uint64_t stop = (s / BS + 1) * BS;
    if (stop > newsize)
        stop = newsize;
    uint64_t reached;
    return write_range(fs, ino, NULL, stop - s, s, &reached);
}

ssize_t pf_write(struct pf_fs *fs, struct pf_inode *ino, const void *buf, size_t len, uint64_t off)
{
    if (!S_ISREG(ino->mode))
        return -EINVAL;
    if (len == 0)
        return 0;
    if (off + len < off || (off + len) / BS >= (1ull << 50))
        return -EFBIG;
    int rc = make_room(fs, len);
    if (rc)
        return rc;
    if (off > ino->size) {
        rc = zero_tail(fs, ino, off);
        if (rc)
            return rc;
    }
    uint64_t reached;
    rc = write_range(fs, ino, buf, len, off, &reached);
    if (rc && reached == off)
        return rc;
    /* a short write (ENOSPC part way) keeps what was written, like other file systems */
    if (reached > ino->size)
        ino->size = reached;
    pf_touch(ino, true, true);
    fs->dirty = true;
    return (ssize_t)(reached - off);
}

int pf_truncate(struct pf_fs *fs, struct pf_inode *ino, uint64_t size)
{
    if (!S_ISREG(ino->mode))
        return -EINVAL;
    if ((size + BS - 1) / BS >= (1ull << 50))
        return -EFBIG;
    if (size > ino->size) {
        int rc = make_room(fs, BS);
        if (!rc)
            rc = zero_tail(fs, ino, size);
        if (rc)
            return rc;
    } else {
        uint64_t keep = (size + BS - 1) / BS;
        while (ino->next > 0) {
            struct pf_extent *e = &ino->ext[ino->next - 1];
            if (e->fblock >= keep) {
                release_extent(fs, e);
                ino->next--;
                continue;
            }
            if (e->fblock + e->nblocks > keep) {
                struct pf_extent tail = *e;
                uint64_t cut = keep - e->fblock;
                tail.dblock += cut;
                tail.nblocks -= (uint32_t)cut;
                release_extent(fs, &tail);
                e->nblocks = (uint32_t)cut;
                e->crc_valid = false;
                if (e->crc_blocks > cut) {
                    e->crc_blocks = 0;
                    e->crc = 0;
                }
            }
            break;
        }
    }
    ino->size = size;
    pf_touch(ino, true, true);
    fs->dirty = true;
    return 0;
}

int pf_read_iov(struct pf_fs *fs, struct pf_inode *ino, size_t len, uint64_t off, struct iovec *iov, int maxiov,
                size_t *total)
{
    *total = 0;
    if (off >= ino->size)
        return 0;
    uint64_t end = off + len;
    if (end > ino->size)
        end = ino->size;
    int n = 0;
    uint64_t pos = off;
    while (pos < end && n < maxiov) {
        uint64_t fb = pos / BS;
        size_t ins = 0;
        long i = find_extent(ino, fb, &ins);
        uint64_t stop;
        if (i >= 0) {
            const struct pf_extent *e = &ino->ext[i];
            stop = (e->fblock + e->nblocks) * BS;
            if (stop > end)
                stop = end;
            iov[n].iov_base = block_ptr(fs, e->dblock + (fb - e->fblock)) + pos % BS;
        } else {
            stop = ins < ino->next ? ino->ext[ins].fblock * BS : end;
            if (stop > end)
                stop = end;
            if (stop - pos > sizeof zero_page)
                stop = pos + sizeof zero_page;
            iov[n].iov_base = zero_page;
        }
        iov[n].iov_len = stop - pos;
        n++;
        pos = stop;
    }
    *total = pos - off;
    return n;
}

/* ---------- namespace ---------- */

struct pf_inode *pf_lookup(struct pf_fs *fs, struct pf_inode *dir, const char *name)
{
    (void)fs;
    for (size_t i = 0; i < dir->nent; i++)
        if (strcmp(dir->ents[i].name, name) == 0)
            return pf_get(fs, dir->ents[i].ino);
    return NULL;
}

static long dirent_index(const struct pf_inode *dir, const char *name)
{
    for (size_t i = 0; i < dir->nent; i++)
        if (strcmp(dir->ents[i].name, name) == 0)
            return (long)i;
    return -1;
}

static int dirent_add(struct pf_inode *dir, const char *name, uint64_t ino)
{
    if (dir->nent == dir->capent) {
        size_t cap = dir->capent ? dir->capent * 2 : 8;
        struct pf_dirent *n = realloc(dir->ents, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        dir->ents = n;
        dir->capent = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    dir->ents[dir->nent++] = (struct pf_dirent){copy, ino};
    return 0;
}

static void dirent_del(struct pf_inode *dir, size_t i)
{
    free(dir->ents[i].name);
    dir->ents[i] = dir->ents[dir->nent - 1];
    dir->nent--;
}

static int check_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || strchr(name, '/'))
        return -EINVAL;
    if (n > PF_NAME_MAX)
        return -ENAMETOOLONG;
    return 0;
}

static int alloc_ino(struct pf_fs *fs, uint64_t *out)
{
    uint64_t start = fs->ino_hint > PF_ROOT_INO ? fs->ino_hint : PF_ROOT_INO + 1;
    for (uint64_t i = start; i < fs->ino_cap; i++)
        if (!fs->inodes[i]) {
            *out = i;
            fs->ino_hint = i + 1;
            return 0;
        }
    for (uint64_t i = PF_ROOT_INO + 1; i < start && i < fs->ino_cap; i++)
        if (!fs->inodes[i]) {
            *out = i;
            fs->ino_hint = i + 1;
            return 0;
        }
    uint64_t n = fs->ino_cap < PF_ROOT_INO + 1 ? PF_ROOT_INO + 1 : fs->ino_cap;
    if (n > max_ino(fs))
        return -ENOSPC;
    int rc = ensure_ino_cap(fs, n + 1);
    if (rc)
        return rc;
    *out = n;
    fs->ino_hint = n + 1;
    return 0;
}

int pf_create(struct pf_fs *fs, struct pf_inode *dir, const char *name, uint32_t mode, uint32_t uid, uint32_t gid,
              const char *target, struct pf_inode **out)
{
    if (!S_ISDIR(dir->mode))
        return -ENOTDIR;
    if (dir->nlink == 0)
        return -ENOENT;
    int rc = check_name(name);
    if (rc)
        return rc;
    if (pf_lookup(fs, dir, name))
        return -EEXIST;
    if (!S_ISREG(mode) && !S_ISDIR(mode) && !S_ISLNK(mode))
        return -EPERM; /* devices, FIFOs, sockets: not needed for image stores */
    if (S_ISLNK(mode) && (!target || strlen(target) == 0 || strlen(target) > PF_SYMLINK_MAX))
        return target && strlen(target) ? -ENAMETOOLONG : -EINVAL;
    uint64_t n;
    rc = alloc_ino(fs, &n);
    if (rc)
        return rc;
    struct pf_inode *ino = calloc(1, sizeof *ino);
    if (!ino)
        return -ENOMEM;
    ino->ino = n;
    ino->mode = mode;
    ino->uid = uid;
    ino->gid = gid;
    ino->nlink = S_ISDIR(mode) ? 2 : 1;
    ino->atime = ino->mtime = ino->ctime = pf_now();
    ino->parent = dir->ino;
    if (S_ISLNK(mode)) {
        ino->target = strdup(target);
        ino->size = strlen(target);
    }
    rc = dirent_add(dir, name, n);
    if (rc) {
        inode_free(ino);
        return rc;
    }
    fs->inodes[n] = ino;
    if (S_ISDIR(mode))
        dir->nlink++;
    pf_touch(dir, true, true);
    fs->dirty = true;
    *out = ino;
    return 0;
}

int pf_link(struct pf_fs *fs, struct pf_inode *ino, struct pf_inode *dir, const char *name)
{
    if (S_ISDIR(ino->mode))
        return -EPERM;
    if (!S_ISDIR(dir->mode))
        return -ENOTDIR;
    int rc = check_name(name);
    if (rc)
        return rc;
    if (pf_lookup(fs, dir, name))
        return -EEXIST;
    if (ino->nlink == 0)
        return -ENOENT;
    rc = dirent_add(dir, name, ino->ino);
    if (rc)
        return rc;
    ino->nlink++;
    pf_touch(ino, false, true);
    pf_touch(dir, true, true);
    fs->dirty = true;
    return 0;
}

void pf_maybe_free(struct pf_fs *fs, struct pf_inode *ino)
{
    if (ino->nlink > 0 || ino->lookup > 0 || ino->opens > 0 || ino->ino == PF_ROOT_INO)
        return;
    for (size_t i = 0; i < ino->next; i++)
        release_extent(fs, &ino->ext[i]);
    fs->inodes[ino->ino] = NULL;
    if (ino->ino < fs->ino_hint)
        fs->ino_hint = ino->ino;
    inode_free(ino);
    fs->dirty = true;
}

/* Drops entry I of DIR (whose target is T): link counts and maybe the inode. */
static void drop_entry(struct pf_fs *fs, struct pf_inode *dir, size_t i, struct pf_inode *t)
{
    dirent_del(dir, i);
    if (S_ISDIR(t->mode)) {
        dir->nlink--;
        t->nlink = 0;
    } else {
        t->nlink--;
    }
    pf_touch(t, false, true);
    pf_touch(dir, true, true);
    fs->dirty = true;
    pf_maybe_free(fs, t);
}

int pf_unlink(struct pf_fs *fs, struct pf_inode *dir, const char *name, bool want_dir)
{
    long i = dirent_index(dir, name);
    if (i < 0)
        return -ENOENT;
    struct pf_inode *t = pf_get(fs, dir->ents[i].ino);
    if (!t)
        return -EIO;
    if (want_dir) {
        if (!S_ISDIR(t->mode))
            return -ENOTDIR;
        if (t->nent > 0)
            return -ENOTEMPTY;
    } else if (S_ISDIR(t->mode)) {
        return -EISDIR;
    }
    drop_entry(fs, dir, (size_t)i, t);
    return 0;
}

int pf_rename(struct pf_fs *fs, struct pf_inode *odir, const char *oname, struct pf_inode *ndir, const char *nname,
              unsigned flags)
{
    const unsigned noreplace = 1, exchange = 2;
    if (flags & ~noreplace)
        return flags & exchange ? -EINVAL : -EINVAL;
    int rc = check_name(nname);
    if (rc)
        return rc;
    long si = dirent_index(odir, oname);
    if (si < 0)
        return -ENOENT;
    struct pf_inode *src = pf_get(fs, odir->ents[si].ino);
    if (!src)
        return -EIO;
    long ti = dirent_index(ndir, nname);
    struct pf_inode *dst = ti >= 0 ? pf_get(fs, ndir->ents[ti].ino) : NULL;
    if (dst == src)
        return 0;
    if (dst && (flags & noreplace))
        return -EEXIST;
    if (S_ISDIR(src->mode)) {
        for (struct pf_inode *p = ndir;; p = pf_get(fs, p->parent)) {
            if (!p)
                return -EIO;
            if (p == src)
                return -EINVAL; /* into its own subtree */
            if (p->ino == PF_ROOT_INO)
                break;
        }
        if (dst && !S_ISDIR(dst->mode))
            return -ENOTDIR;
        if (dst && dst->nent > 0)
            return -ENOTEMPTY;
    } else if (dst && S_ISDIR(dst->mode)) {
        return -EISDIR;
    }
    if (dst)
        drop_entry(fs, ndir, (size_t)ti, dst);
    si = dirent_index(odir, oname);
    char *name = strdup(nname);
    if (!name)
        return -ENOMEM;
    if (odir == ndir) {
        free(odir->ents[si].name);
        odir->ents[si].name = name;
    } else {
        rc = dirent_add(ndir, nname, src->ino);
        free(name);
        if (rc)
            return rc;
        dirent_del(odir, (size_t)si);
        if (S_ISDIR(src->mode)) {
            odir->nlink--;
            ndir->nlink++;
            src->parent = ndir->ino;
        }
    }
    pf_touch(src, false, true);
    pf_touch(odir, true, true);
    pf_touch(ndir, true, true);
    fs->dirty = true;
    return 0;
}

/* ---------- metadata serialisation ---------- */

static size_t record_size(const struct pf_inode *ino)
{
    size_t payload = 0;
    if (S_ISREG(ino->mode))
        payload = ino->next * sizeof(struct pf_rec_extent);
    else if (S_ISDIR(ino->mode))
        for (size_t i = 0; i < ino->nent; i++)
            payload += PF_DIRENT_FIXED + strlen(ino->ents[i].name);
    else if (S_ISLNK(ino->mode))
        payload = strlen(ino->target);
    return (sizeof(struct pf_rec_inode) + payload + 4 + 7) & ~(size_t)7;
}

static size_t serialise(struct pf_fs *fs, uint8_t *out, uint64_t gen)
{
    size_t off = sizeof(struct pf_meta_header);
    uint64_t count = 0;
    for (uint64_t n = 0; n < fs->ino_cap; n++) {
        struct pf_inode *ino = fs->inodes[n];
        if (!ino || ino->nlink == 0)
            continue; /* unlinked but still open: gone after a crash, as on any file system */
        size_t rl = record_size(ino);
        uint8_t *r = out + off;
        memset(r, 0, rl);
        struct pf_rec_inode h = {(uint32_t)rl, 0, ino->ino, ino->mode, ino->uid, ino->gid, ino->nlink, ino->size,
                                 ino->atime, ino->mtime, ino->ctime};
        uint8_t *p = r + sizeof h;
        if (S_ISREG(ino->mode)) {
            h.count = (uint32_t)ino->next;
            for (size_t i = 0; i < ino->next; i++) {
                struct pf_rec_extent e = {ino->ext[i].fblock, ino->ext[i].dblock, ino->ext[i].nblocks, ino->ext[i].crc};
                memcpy(p, &e, sizeof e);
                p += sizeof e;
            }
        } else if (S_ISDIR(ino->mode)) {
            h.count = (uint32_t)ino->nent;
            for (size_t i = 0; i < ino->nent; i++) {
                uint16_t l = (uint16_t)strlen(ino->ents[i].name);
                memcpy(p, &ino->ents[i].ino, 8);
                memcpy(p + 8, &l, 2);
                memcpy(p + 10, ino->ents[i].name, l);
                p += PF_DIRENT_FIXED + l;
            }
        } else {
            h.count = (uint32_t)strlen(ino->target);
            memcpy(p, ino->target, h.count);
        }
        memcpy(r, &h, sizeof h);
        uint32_t crc = pf_crc32c(0, r, rl - 4);
        memcpy(r + rl - 4, &crc, 4);
        off += rl;
        count++;
    }
    struct pf_meta_header mh = {.version = PF_FORMAT_VERSION,
                                .header_size = sizeof mh,
                                .generation = gen,
                                .blob_len = off,
                                .inode_count = count,
                                .root_ino = PF_ROOT_INO};
    memcpy(mh.magic, PF_META_MAGIC, 8);
    mh.crc = pf_crc32c(0, &mh, offsetof(struct pf_meta_header, crc));
    memcpy(out, &mh, sizeof mh);
    return off;
}

static void fill_sb(struct pf_fs *fs, struct pf_sb *sb, uint64_t gen, uint64_t meta_len, uint32_t meta_crc)
{
    memset(sb, 0, sizeof *sb);
    memcpy(sb->magic, PF_SB_MAGIC, 8);
    sb->version = PF_FORMAT_VERSION;
    sb->block_size = PF_BLOCK_SIZE;
    memcpy(sb->uuid, fs->uuid, 16);
    sb->generation = gen;
    uint64_t size = 0;
    for (int i = 0; i < fs->nreg; i++) {
        size += fs->reg[i].length;
        sb->regions[i] = (struct pf_sb_region){fs->reg[i].phys_base, fs->reg[i].length, fs->reg[i].first_block,
                                               fs->reg[i].nblocks, {0}};
        memcpy(sb->regions[i].uuid, fs->reg[i].uuid, 16);
    }
    sb->size = size;
    sb->total_blocks = fs->total_blocks;
    sb->region_count = (uint32_t)fs->nreg;
    sb->slot = (uint32_t)(gen % 2);
    sb->meta_area[0] = fs->meta_area[0];
    sb->meta_area[1] = fs->meta_area[1];
    sb->meta_area_blocks = fs->meta_area_blocks;
    sb->meta_block = fs->meta_area[gen % 2];
    sb->meta_len = meta_len;
    sb->meta_crc = meta_crc;
    sb->commit_ns = pf_now();
    sb->created_ns = fs->created_ns;
    sb->crc = pf_crc32c(0, sb, offsetof(struct pf_sb, crc));
}

int pf_commit(struct pf_fs *fs)
{
    if (fs->readonly)
        return -EROFS;
    /* 1. Checksum new data. Committed extents are never written in place, so
     *    their checksum stays true; only new or split extents need one. */
    size_t need = sizeof(struct pf_meta_header);
    for (uint64_t n = 0; n < fs->ino_cap; n++) {
        struct pf_inode *ino = fs->inodes[n];
        if (!ino)
            continue;
        for (size_t i = 0; i < ino->next; i++) {
            struct pf_extent *e = &ino->ext[i];
            if (!e->committed) {
                /* the blocks written since the last checksummed ones (see write_range) */
                e->crc = pf_crc32c(e->crc, block_ptr(fs, e->dblock + e->crc_blocks),
                                   (size_t)(e->nblocks - e->crc_blocks) * BS);
                e->crc_blocks = e->nblocks;
            } else if (!e->crc_valid) {
                e->crc = pf_crc32c(0, block_ptr(fs, e->dblock), (size_t)e->nblocks * BS);
            }
        }
        if (ino->nlink > 0)
            need += record_size(ino);
    }
    uint64_t gen = fs->generation + 1;
    uint64_t area_bytes = fs->meta_area_blocks * BS;
    if (need > area_bytes)
        return -ENOSPC; /* metadata area full: too many files or extents (see FORMAT.md) */
    /* 2. Metadata into the area the newest superblock does not use. */
    uint8_t *area = block_ptr(fs, fs->meta_area[gen % 2]);
    size_t len = serialise(fs, area, gen);
    uint32_t crc = pf_crc32c(0, area, len);
    /* 3. Data and metadata durable before the superblock that points at them. */
    for (int i = 0; i < fs->nreg; i++) {
        int rc = sync_range(fs, &fs->reg[i], 0, fs->reg[i].length);
        if (rc)
            return rc;
    }
    /* 4. The commit point: the other superblock copy, generation + 1. */
    struct pf_sb sb;
    fill_sb(fs, &sb, gen, len, crc);
    memcpy(block_ptr(fs, gen % 2), &sb, sizeof sb);
    int rc = sync_range(fs, &fs->reg[0], (gen % 2) * BS, BS);
    if (rc)
        return rc;
    fs->generation = gen;
    for (uint64_t n = 0; n < fs->ino_cap; n++) {
        struct pf_inode *ino = fs->inodes[n];
        if (!ino)
            continue;
        for (size_t i = 0; i < ino->next; i++)
            ino->ext[i].committed = ino->ext[i].crc_valid = true;
    }
    for (size_t i = 0; i < fs->npending; i += 2)
        free_run(fs, fs->pending[i], fs->pending[i + 1]);
    fs->npending = 0;
    fs->dirty = false;
    return 0;
}

/* ---------- loading ---------- */

static bool sb_valid(const struct pf_sb *sb, int slot, const char **why)
{
    if (memcmp(sb->magic, PF_SB_MAGIC, 8) != 0)
        return *why = "no superblock magic", false;
    if (sb->crc != pf_crc32c(0, sb, offsetof(struct pf_sb, crc)))
        return *why = "superblock checksum mismatch", false;
    if (sb->version != PF_FORMAT_VERSION)
        return *why = "unsupported format version", false;
    if (sb->block_size != PF_BLOCK_SIZE || sb->slot != (uint32_t)slot || sb->generation % 2 != (uint64_t)slot)
        return *why = "inconsistent superblock fields", false;
    if (sb->region_count == 0 || sb->region_count > PF_MAX_REGIONS)
        return *why = "bad region count", false;
    return true;
}

/* Checks that the superblock describes the mapped regions and a sane layout. */
static int adopt_layout(struct pf_fs *fs, const struct pf_sb *sb, struct pf_report *rep)
{
    if ((int)sb->region_count != fs->nreg) {
        pf_report_error(rep, "the file system spans %u region(s) but %d were given", sb->region_count, fs->nreg);
        return -EINVAL;
    }
    uint64_t next = 0;
    for (int i = 0; i < fs->nreg; i++) {
        const struct pf_sb_region *sr = &sb->regions[i];
        struct pf_region *r = &fs->reg[i];
        if (sr->first_block != next || sr->length != sr->nblocks * BS || sr->nblocks < 2 || sr->length > r->length) {
            pf_report_error(rep, "region %d (%s): table entry does not match the region (%llu bytes recorded, %llu mapped)",
                            i, r->path, (unsigned long long)sr->length, (unsigned long long)r->length);
            return -EINVAL;
        }
        r->length = sr->length;
        r->nblocks = sr->nblocks;
        r->first_block = sr->first_block;
        memcpy(r->uuid, sr->uuid, 16);
        if (!r->phys_base)
            r->phys_base = sr->phys_base;
        next += sr->nblocks;
        if (i > 0) {
            const struct pf_rg_header *h = (const void *)r->map;
            if (memcmp(h->magic, PF_RG_MAGIC, 8) != 0 || h->crc != pf_crc32c(0, h, offsetof(struct pf_rg_header, crc)) ||
                memcmp(h->fs_uuid, sb->uuid, 16) != 0 || memcmp(h->uuid, sr->uuid, 16) != 0 || h->index != (uint32_t)i) {
                pf_report_error(rep, "region %d (%s) is not region %d of this file system (header missing, damaged or "
                                "from another one); give the regions in mkfs order", i, r->path, i);
                return -EINVAL;
            }
        }
    }
    if (next != sb->total_blocks) {
        pf_report_error(rep, "superblock block count %llu does not match the region table (%llu)",
                        (unsigned long long)sb->total_blocks, (unsigned long long)next);
        return -EINVAL;
    }
    fs->total_blocks = next;
    uint64_t m = sb->meta_area_blocks;
    if (m == 0 || sb->meta_area[0] != 2 || sb->meta_area[1] != 2 + m || 2 + 2 * m >= fs->reg[0].nblocks) {
        pf_report_error(rep, "superblock metadata areas are out of place");
        return -EINVAL;
    }
    fs->meta_area[0] = sb->meta_area[0];
    fs->meta_area[1] = sb->meta_area[1];
    fs->meta_area_blocks = m;
    memcpy(fs->uuid, sb->uuid, 16);
    fs->created_ns = sb->created_ns;
    return 0;
}

static bool blob_valid(struct pf_fs *fs, const struct pf_sb *sb, const char **why)
{
    if (sb->meta_block != fs->meta_area[sb->generation % 2] || sb->meta_len < sizeof(struct pf_meta_header) ||
        sb->meta_len > fs->meta_area_blocks * BS)
        return *why = "metadata location out of range", false;
    const uint8_t *blob = block_ptr(fs, sb->meta_block);
    if (pf_crc32c(0, blob, sb->meta_len) != sb->meta_crc)
        return *why = "metadata checksum mismatch", false;
    struct pf_meta_header h;
    memcpy(&h, blob, sizeof h);
    if (memcmp(h.magic, PF_META_MAGIC, 8) != 0 || h.crc != pf_crc32c(0, &h, offsetof(struct pf_meta_header, crc)) ||
        h.version != PF_FORMAT_VERSION || h.header_size != sizeof h || h.generation != sb->generation ||
        h.blob_len != sb->meta_len || h.root_ino != PF_ROOT_INO)
        return *why = "metadata header invalid", false;
    return true;
}

static bool valid_name(const char *p, size_t l)
{
    if (l == 0 || l > PF_NAME_MAX || (l == 1 && p[0] == '.') || (l == 2 && p[0] == '.' && p[1] == '.'))
        return false;
    for (size_t i = 0; i < l; i++)
        if (p[i] == '/' || p[i] == 0)
            return false;
    return true;
}

/* Parses one record; NULL with a reason on anything inconsistent. */
static struct pf_inode *parse_record(struct pf_fs *fs, const uint8_t *r, size_t rl, const char **why)
{
    struct pf_rec_inode h;
    memcpy(&h, r, sizeof h);
    size_t room = rl - sizeof h - 4;
    const uint8_t *p = r + sizeof h;
    if (h.ino < PF_ROOT_INO || h.ino > max_ino(fs))
        return *why = "inode number out of range", NULL;
    struct pf_inode *ino = calloc(1, sizeof *ino);
    ino->ino = h.ino;
    ino->mode = h.mode;
    ino->uid = h.uid;
    ino->gid = h.gid;
    ino->nlink = h.nlink;
    ino->size = h.size;
    ino->atime = h.atime;
    ino->mtime = h.mtime;
    ino->ctime = h.ctime;
    if (S_ISREG(h.mode)) {
        if ((uint64_t)h.count * sizeof(struct pf_rec_extent) > room || h.size / BS >= (1ull << 50)) {
            *why = "extent list does not fit the record";
            goto bad;
        }
        ino->ext = calloc(h.count ? h.count : 1, sizeof *ino->ext);
        ino->next = ino->capext = h.count;
        uint64_t fileblocks = (h.size + BS - 1) / BS, prev_end = 0;
        for (uint32_t i = 0; i < h.count; i++) {
            struct pf_rec_extent e;
            memcpy(&e, p + i * sizeof e, sizeof e);
            int reg = region_of(fs, e.dblock);
            if (e.nblocks == 0 || e.fblock < prev_end || e.fblock + e.nblocks > fileblocks || reg < 0 ||
                e.dblock + e.nblocks > fs->reg[reg].first_block + fs->reg[reg].nblocks) {
                *why = "extent out of range (file or regions)";
                goto bad;
            }
            prev_end = e.fblock + e.nblocks;
            ino->ext[i] = (struct pf_extent){e.fblock, e.dblock, e.nblocks, e.crc, true, true, 0};
        }
    } else if (S_ISDIR(h.mode)) {
        size_t o = 0;
        for (uint32_t i = 0; i < h.count; i++) {
            uint64_t child;
            uint16_t l;
            if (o + PF_DIRENT_FIXED > room) {
                *why = "directory entries do not fit the record";
                goto bad;
            }
            memcpy(&child, p + o, 8);
            memcpy(&l, p + o + 8, 2);
            if (o + PF_DIRENT_FIXED + l > room || !valid_name((const char *)p + o + 10, l)) {
                *why = "bad directory entry name";
                goto bad;
            }
            char name[PF_NAME_MAX + 1];
            memcpy(name, p + o + 10, l);
            name[l] = 0;
            if (dirent_index(ino, name) >= 0) {
                *why = "duplicate name in directory";
                goto bad;
            }
            dirent_add(ino, name, child);
            o += PF_DIRENT_FIXED + l;
        }
    } else if (S_ISLNK(h.mode)) {
        if (h.count == 0 || h.count > PF_SYMLINK_MAX || h.count > room || h.size != h.count ||
            memchr(p, 0, h.count)) {
            *why = "bad symbolic link target";
            goto bad;
        }
        ino->target = strndup((const char *)p, h.count);
    } else {
        *why = "unsupported file type";
        goto bad;
    }
    return ino;
bad:
    inode_free(ino);
    return NULL;
}

static void mark_reserved(struct pf_fs *fs)
{
    size_t bytes = (fs->total_blocks + 7) / 8;
    memset(fs->bitmap, 0, bytes);
    fs->free_blocks = fs->total_blocks;
    for (uint64_t b = 0; b < 2 + 2 * fs->meta_area_blocks; b++)
        bit_set(fs, b);
    fs->free_blocks -= 2 + 2 * fs->meta_area_blocks;
    for (int i = 1; i < fs->nreg; i++) {
        bit_set(fs, fs->reg[i].first_block);
        fs->free_blocks--;
    }
    /* bits past the end of the last byte: in use, so the allocator never looks there */
    for (uint64_t b = fs->total_blocks; b < bytes * 8; b++)
        bit_set(fs, b);
}

static const char *path_hint(struct pf_fs *fs, uint64_t ino, char *buf, size_t n);

/* Drops inode N (and later every entry naming it): REPAIR semantics of fsck. */
static void drop_inode(struct pf_fs *fs, uint64_t n)
{
    inode_free(fs->inodes[n]);
    fs->inodes[n] = NULL;
}

/* Builds the in-memory state from the active metadata. Every problem is
 * reported; the state left behind is consistent (bad parts dropped). */
static int load_state(struct pf_fs *fs, const struct pf_sb *sb, bool check_data, struct pf_report *rep)
{
    const uint8_t *blob = block_ptr(fs, sb->meta_block);
    size_t len = sb->meta_len;
    struct pf_meta_header mh;
    memcpy(&mh, blob, sizeof mh);
    uint64_t parsed = 0;
    size_t off = sizeof mh;
    while (off < len) {
        uint32_t rl;
        if (len - off < sizeof(struct pf_rec_inode) + 4) {
            pf_report_error(rep, "metadata: truncated record at offset %zu", off);
            break;
        }
        memcpy(&rl, blob + off, 4);
        if (rl < sizeof(struct pf_rec_inode) + 4 || rl % 8 || rl > len - off) {
            pf_report_error(rep, "metadata: bad record length %u at offset %zu; the rest is unreadable", rl, off);
            break;
        }
        uint32_t crc;
        memcpy(&crc, blob + off + rl - 4, 4);
        uint64_t recino;
        memcpy(&recino, blob + off + 8, 8);
        if (crc != pf_crc32c(0, blob + off, rl - 4)) {
            pf_report_error(rep, "metadata: record of inode %llu at offset %zu: checksum mismatch",
                            (unsigned long long)recino, off);
            off += rl;
            continue;
        }
        const char *why = "?";
        struct pf_inode *ino = parse_record(fs, blob + off, rl, &why);
        if (!ino) {
            pf_report_error(rep, "metadata: inode %llu: %s", (unsigned long long)recino, why);
        } else if (ensure_ino_cap(fs, ino->ino + 1) != 0) {
            inode_free(ino);
            return -ENOMEM;
        } else if (fs->inodes[ino->ino]) {
            pf_report_error(rep, "metadata: inode %llu recorded twice", (unsigned long long)ino->ino);
            inode_free(ino);
        } else {
            fs->inodes[ino->ino] = ino;
        }
        parsed++;
        off += rl;
    }
    if (parsed != mh.inode_count)
        pf_report_error(rep, "metadata: %llu inode records found, header says %llu", (unsigned long long)parsed,
                        (unsigned long long)mh.inode_count);
    if (ensure_ino_cap(fs, PF_ROOT_INO + 1))
        return -ENOMEM;
    struct pf_inode *root = fs->inodes[PF_ROOT_INO];
    if (!root || !S_ISDIR(root->mode)) {
        pf_report_error(rep, "the root directory is missing or not a directory");
        return -EUCLEAN;
    }
    fs->bitmap = calloc((fs->total_blocks + 7) / 8 + 1, 1);
    if (!fs->bitmap)
        return -ENOMEM;
    /* Blocks: inside regions' data areas, each used once, checksums right. */
    mark_reserved(fs);
    for (uint64_t n = 0; n < fs->ino_cap; n++) {
        struct pf_inode *ino = fs->inodes[n];
        if (!ino)
            continue;
        bool bad = false;
        for (size_t i = 0; i < ino->next && !bad; i++) {
            struct pf_extent *e = &ino->ext[i];
            for (uint64_t b = e->dblock; b < e->dblock + e->nblocks; b++)
                if (bit_get(fs, b)) {
                    pf_report_error(rep, "inode %llu: block %llu is reserved or used twice", (unsigned long long)n,
                                    (unsigned long long)b);
                    bad = true;
                    break;
                }
            if (!bad && check_data && pf_crc32c(0, block_ptr(fs, e->dblock), (size_t)e->nblocks * BS) != e->crc) {
                char p[512];
                pf_report_error(rep, "file %s (inode %llu): data checksum mismatch in blocks %llu..%llu of the file",
                                path_hint(fs, n, p, sizeof p), (unsigned long long)n, (unsigned long long)e->fblock,
                                (unsigned long long)(e->fblock + e->nblocks - 1));
                bad = true;
            }
            if (!bad)
                for (uint64_t b = e->dblock; b < e->dblock + e->nblocks; b++)
                    bit_set(fs, b);
        }
        if (bad) {
            if (n == PF_ROOT_INO)
                return -EUCLEAN;
            drop_inode(fs, n);
            mark_reserved(fs); /* restart the block accounting without the dropped file */
            n = 0;
        }
    }
    /* Tree: every entry names a live inode, directories have one parent, every
     * inode is reachable, link counts match. */
    uint64_t *refs = calloc(fs->ino_cap, sizeof *refs);
    uint64_t *queue = calloc(fs->ino_cap, sizeof *queue);
    bool *seen = calloc(fs->ino_cap, sizeof *seen);
    size_t qh = 0, qt = 0;
    queue[qt++] = PF_ROOT_INO;
    seen[PF_ROOT_INO] = true;
    root->parent = PF_ROOT_INO;
    while (qh < qt) {
        struct pf_inode *d = fs->inodes[queue[qh++]];
        for (size_t i = 0; i < d->nent;) {
            uint64_t c = d->ents[i].ino;
            struct pf_inode *ci = c < fs->ino_cap ? fs->inodes[c] : NULL;
            if (!ci || (S_ISDIR(ci->mode) && seen[c]) || c == PF_ROOT_INO) {
                pf_report_error(rep, "directory inode %llu: entry '%s' names %s inode %llu; entry dropped",
                                (unsigned long long)d->ino, d->ents[i].name, ci ? "an already linked directory" : "a missing or dropped",
                                (unsigned long long)c);
                dirent_del(d, i);
                continue;
            }
            refs[c]++;
            if (S_ISDIR(ci->mode)) {
                ci->parent = d->ino;
                seen[c] = true;
                queue[qt++] = c;
            } else {
                seen[c] = true;
            }
            i++;
        }
    }
    for (uint64_t n = 0; n < fs->ino_cap; n++) {
        struct pf_inode *ino = fs->inodes[n];
        if (!ino)
            continue;
        if (!seen[n]) {
            pf_report_error(rep, "inode %llu is not reachable from the root; dropped", (unsigned long long)n);
            drop_inode(fs, n);
            continue;
        }
        uint64_t want = refs[n];
        if (S_ISDIR(ino->mode)) {
            want = 2;
            for (size_t i = 0; i < ino->nent; i++) {
                struct pf_inode *c = fs->inodes[ino->ents[i].ino];
                want += c && S_ISDIR(c->mode);
            }
        }
        if (ino->nlink != want) {
            pf_report_error(rep, "inode %llu: link count %u, should be %llu", (unsigned long long)n, ino->nlink,
                            (unsigned long long)want);
            ino->nlink = (uint32_t)want;
        }
    }
    free(refs);
    free(queue);
    free(seen);
    /* final block accounting over what survived */
    mark_reserved(fs);
    for (uint64_t n = 0; n < fs->ino_cap; n++)
        if (fs->inodes[n])
            for (size_t i = 0; i < fs->inodes[n]->next; i++)
                for (uint64_t b = 0; b < fs->inodes[n]->ext[i].nblocks; b++) {
                    bit_set(fs, fs->inodes[n]->ext[i].dblock + b);
                    fs->free_blocks--;
                }
    fs->generation = sb->generation;
    return 0;
}

static const char *path_hint(struct pf_fs *fs, uint64_t ino, char *buf, size_t n)
{
    /* Files are found through their parent's entries; good enough for messages. */
    for (uint64_t d = 0; d < fs->ino_cap; d++) {
        struct pf_inode *di = fs->inodes[d];
        if (!di || !S_ISDIR(di->mode))
            continue;
        for (size_t i = 0; i < di->nent; i++)
            if (di->ents[i].ino == ino) {
                snprintf(buf, n, "'%s' (in directory inode %llu)", di->ents[i].name, (unsigned long long)d);
                return buf;
            }
    }
    snprintf(buf, n, "(unnamed)");
    return buf;
}

struct open_result {
    int active;          /* slot used, -1 if none */
    bool other_ok;       /* the other slot holds an intact older state */
    bool fell_back;      /* the newest state was damaged; the previous one is loaded */
    struct pf_sb sb[2];
};

/* Opens regions and picks the state to use: the newest superblock copy that
 * is intact and whose metadata is intact. A damaged copy that is the newer
 * one is an error (corruption); a damaged older copy is what an interrupted
 * commit leaves and only a note. */
static int open_fs(const char *spec, int flags, bool check_data, bool fallback, struct pf_fs **out,
                   struct open_result *res, struct pf_report *rep)
{
    struct pf_fs *fs = fs_new();
    fs->readonly = flags & PF_OPEN_RDONLY;
    fs->no_msync = flags & PF_OPEN_NO_MSYNC;
    int rc = map_all(fs, spec, fs->readonly, rep);
    if (rc) {
        pf_close(fs);
        return rc;
    }
    fs->reg[0].first_block = 0;
    bool sbok[2], blobok[2] = {false, false};
    const char *why[2] = {"", ""};
    for (int s = 0; s < 2; s++) {
        memcpy(&res->sb[s], fs->reg[0].map + s * BS, BS);
        sbok[s] = sb_valid(&res->sb[s], s, &why[s]);
    }
    if (!sbok[0] && !sbok[1]) {
        pf_report_error(rep, "%s holds no valid PramFS superblock (copy 0: %s; copy 1: %s): not formatted, another "
                        "format, or destroyed", fs->reg[0].path, why[0], why[1]);
        pf_close(fs);
        return -EINVAL;
    }
    int newest = !sbok[1] || (sbok[0] && res->sb[0].generation > res->sb[1].generation) ? 0 : 1;
    rc = adopt_layout(fs, &res->sb[newest], rep);
    if (rc) {
        pf_close(fs);
        return rc;
    }
    for (int s = 0; s < 2; s++)
        if (sbok[s]) {
            blobok[s] = blob_valid(fs, &res->sb[s], &why[s]);
            if (blobok[s] && memcmp(res->sb[s].uuid, res->sb[newest].uuid, 16) != 0) {
                blobok[s] = false;
                why[s] = "belongs to another file system";
            }
        }
    int older = 1 - newest;
    res->active = newest;
    if (!blobok[newest]) {
        pf_report_error(rep, "newest state (generation %llu): %s", (unsigned long long)res->sb[newest].generation,
                        why[newest]);
        if (fallback && sbok[older] && blobok[older]) {
            pf_report_note(rep, "falling back to the previous state (generation %llu)",
                           (unsigned long long)res->sb[older].generation);
            res->active = older;
            res->fell_back = true;
        } else {
            pf_close(fs);
            return -EUCLEAN;
        }
    }
    res->other_ok = sbok[1 - res->active] && blobok[1 - res->active] &&
                    res->sb[1 - res->active].generation + 1 == res->sb[res->active].generation;
    if (res->active == newest && !res->other_ok)
        pf_report_note(rep, "superblock copy %d does not hold the previous state (%s): an interrupted commit leaves "
                       "this; the next commit rewrites it", older, sbok[older] ? why[older] : why[older]);
    rc = load_state(fs, &res->sb[res->active], check_data, rep);
    if (rc) {
        pf_close(fs);
        return rc;
    }
    *out = fs;
    return 0;
}

int pf_open(const char *regions, int flags, struct pf_fs **out, struct pf_report *rep)
{
    struct open_result res = {0};
    struct pf_fs *fs = NULL;
    int errors_before = rep->errors;
    int rc = open_fs(regions, flags, false, false, &fs, &res, rep);
    if (rc)
        return rc;
    if (rep->errors > errors_before) {
        pf_close(fs);
        return -EUCLEAN;
    }
    *out = fs;
    return 0;
}

int pf_mkfs(const char *regions, uint64_t meta_bytes, struct pf_report *rep)
{
    struct pf_fs *fs = fs_new();
    int rc = map_all(fs, regions, false, rep);
    if (rc)
        goto out;
    if (getrandom(fs->uuid, 16, 0) != 16) {
        rc = -errno;
        pf_report_error(rep, "getrandom failed: %s", strerror(errno));
        goto out;
    }
    uint64_t next = 0;
    for (int i = 0; i < fs->nreg; i++) {
        fs->reg[i].first_block = next;
        next += fs->reg[i].nblocks;
        if (getrandom(fs->reg[i].uuid, 16, 0) != 16) {
            rc = -EIO;
            goto out;
        }
    }
    fs->total_blocks = next;
    uint64_t m = meta_bytes ? (meta_bytes + BS - 1) / BS : fs->reg[0].nblocks / 64;
    if (!meta_bytes) {
        if (m < 64)
            m = 64;
        if (m > 16384)
            m = 16384;
    }
    if (2 + 2 * m + 8 > fs->reg[0].nblocks) {
        pf_report_error(rep, "region %s is too small for two metadata areas of %llu blocks", fs->reg[0].path,
                        (unsigned long long)m);
        rc = -EINVAL;
        goto out;
    }
    fs->meta_area_blocks = m;
    fs->meta_area[0] = 2;
    fs->meta_area[1] = 2 + m;
    fs->created_ns = pf_now();
    /* Old superblocks first: a half-done mkfs must not look like the old file system. */
    memset(fs->reg[0].map, 0, 2 * BS);
    for (int i = 1; i < fs->nreg; i++) {
        struct pf_rg_header h;
        memset(&h, 0, sizeof h);
        memcpy(h.magic, PF_RG_MAGIC, 8);
        h.version = PF_FORMAT_VERSION;
        h.index = (uint32_t)i;
        memcpy(h.fs_uuid, fs->uuid, 16);
        memcpy(h.uuid, fs->reg[i].uuid, 16);
        h.length = fs->reg[i].length;
        h.first_block = fs->reg[i].first_block;
        h.nblocks = fs->reg[i].nblocks;
        h.crc = pf_crc32c(0, &h, offsetof(struct pf_rg_header, crc));
        memcpy(fs->reg[i].map, &h, sizeof h);
    }
    fs->bitmap = calloc((fs->total_blocks + 7) / 8 + 1, 1);
    mark_reserved(fs);
    rc = ensure_ino_cap(fs, 64);
    if (rc)
        goto out;
    struct pf_inode *root = calloc(1, sizeof *root);
    root->ino = PF_ROOT_INO;
    root->mode = S_IFDIR | 0755;
    root->uid = getuid();
    root->gid = getgid();
    root->nlink = 2;
    root->parent = PF_ROOT_INO;
    root->atime = root->mtime = root->ctime = fs->created_ns;
    fs->inodes[PF_ROOT_INO] = root;
    /* Both copies valid from the start: generation 0 in slot 0, 1 in slot 1. */
    fs->generation = UINT64_MAX;
    rc = pf_commit(fs);
    if (!rc)
        rc = pf_commit(fs);
    if (rc)
        pf_report_error(rep, "writing the new file system failed: %s", strerror(-rc));
out:
    pf_close(fs);
    return rc;
}

/* ---------- fsck, info, ls ---------- */

static void count_inodes(struct pf_fs *fs, struct pf_info_data *d)
{
    for (uint64_t n = 0; n < fs->ino_cap; n++) {
        const struct pf_inode *i = fs->inodes[n];
        if (!i)
            continue;
        d->inodes++;
        if (S_ISREG(i->mode)) {
            d->files++;
            d->file_bytes += i->size;
        } else if (S_ISDIR(i->mode)) {
            d->directories++;
        } else if (S_ISLNK(i->mode)) {
            d->symlinks++;
        }
    }
}

int pf_fsck(const char *regions, bool repair, FILE *out)
{
    return pf_fsck_ex(regions, repair, out, NULL);
}

int pf_fsck_ex(const char *regions, bool repair, FILE *out, struct pf_fsck_summary *sum)
{
    struct pf_report rep = {.out = out};
    struct open_result res = {0};
    struct pf_fs *fs = NULL;
    struct pf_fsck_summary local;
    if (!sum)
        sum = &local;
    memset(sum, 0, sizeof *sum);
    int rc = open_fs(regions, repair ? 0 : PF_OPEN_RDONLY, true, repair, &fs, &res, &rep);
    sum->problems = rep.errors;
    sum->notes = rep.notes;
    snprintf(sum->first, sizeof sum->first, "%s", rep.first);
    if (rc == -EUCLEAN) {
        if (out)
            fprintf(out, "fsck: %s: corrupt, not repairable%s\n", regions,
                    repair ? "" : " without -r (try pramfs fsck -r)");
        return sum->code = PF_FSCK_CORRUPT;
    }
    if (rc) {
        if (!sum->first[0])
            snprintf(sum->first, sizeof sum->first, "%s", strerror(-rc));
        if (out)
            fprintf(out, "fsck: %s: cannot check: %s\n", regions, sum->first);
        return sum->code = PF_FSCK_ERROR;
    }
    struct pf_info_data counts = {0};
    count_inodes(fs, &counts);
    sum->inodes = counts.inodes;
    sum->file_bytes = counts.file_bytes;
    int code = PF_FSCK_CLEAN;
    if (rep.errors > 0 || res.fell_back) {
        if (repair) {
            /* Commit what survived the checks as a new generation: it replaces the
             * damaged copy (fallback) or the older one. */
            fs->dirty = true;
            rc = pf_commit(fs);
            if (rc) {
                if (out)
                    fprintf(out, "fsck: %s: writing the repaired state failed: %s\n", regions, strerror(-rc));
                code = PF_FSCK_CORRUPT;
            } else {
                if (out)
                    fprintf(out, "fsck: %s: repaired %d problem(s); now generation %llu\n", regions, rep.errors,
                            (unsigned long long)fs->generation);
                code = PF_FSCK_REPAIRED;
            }
        } else {
            if (out)
                fprintf(out, "fsck: %s: %d problem(s) found; run pramfs fsck -r to drop what cannot be trusted\n",
                        regions, rep.errors);
            code = PF_FSCK_CORRUPT;
        }
    } else if (out) {
        fprintf(out, "fsck: %s: clean, generation %llu, %llu inodes, %llu bytes in files, every checksum verified\n",
                regions, (unsigned long long)fs->generation, (unsigned long long)counts.inodes,
                (unsigned long long)counts.file_bytes);
    }
    sum->generation = fs->generation;
    pf_close(fs);
    return sum->code = code;
}

static void uuid_str(const uint8_t *u, char *s)
{
    static const char *hex = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            s[o++] = '-';
        s[o++] = hex[u[i] >> 4];
        s[o++] = hex[u[i] & 15];
    }
    s[o] = 0;
}

static void fill_info(struct pf_fs *fs, const struct pf_sb *sb, struct pf_info_data *d)
{
    memset(d, 0, sizeof *d);
    d->format_version = sb->version;
    d->block_size = sb->block_size;
    memcpy(d->uuid, fs->uuid, 16);
    d->generation = sb->generation;
    d->size = sb->size;
    d->data_blocks = fs->total_blocks - (2 + 2 * fs->meta_area_blocks) - (uint64_t)(fs->nreg - 1);
    d->free_blocks = fs->free_blocks;
    d->meta_area_bytes = fs->meta_area_blocks * BS;
    d->meta_bytes = sb->meta_len;
    d->created_ns = sb->created_ns;
    d->committed_ns = sb->commit_ns;
    d->regions = fs->nreg;
    count_inodes(fs, d);
}

int pf_info_read(const char *regions, struct pf_info_data *d, struct pf_report *rep)
{
    struct pf_fs *fs = NULL;
    struct open_result res = {0};
    int rc = open_fs(regions, PF_OPEN_RDONLY, false, false, &fs, &res, rep);
    if (rc)
        return rc;
    fill_info(fs, &res.sb[res.active], d);
    pf_close(fs);
    return 0;
}

int pf_info(const char *regions, FILE *out)
{
    struct pf_report rep = {.out = stderr};
    struct pf_fs *fs = NULL;
    struct open_result res = {0};
    int rc = open_fs(regions, PF_OPEN_RDONLY, false, false, &fs, &res, &rep);
    if (rc)
        return rc;
    struct pf_info_data d;
    fill_info(fs, &res.sb[res.active], &d);
    char u[40];
    uuid_str(d.uuid, u);
    fprintf(out, "format_version: %u\nuuid: %s\ngeneration: %llu\nblock_size: %u\nsize: %llu\n", d.format_version, u,
            (unsigned long long)d.generation, d.block_size, (unsigned long long)d.size);
    fprintf(out, "data_blocks: %llu\nfree_blocks: %llu\ninodes: %llu\nmetadata_area_bytes: %llu\nmetadata_bytes: %llu\n",
            (unsigned long long)d.data_blocks, (unsigned long long)d.free_blocks, (unsigned long long)d.inodes,
            (unsigned long long)d.meta_area_bytes, (unsigned long long)d.meta_bytes);
    fprintf(out, "files: %llu\ndirectories: %llu\nsymlinks: %llu\nfile_bytes: %llu\n", (unsigned long long)d.files,
            (unsigned long long)d.directories, (unsigned long long)d.symlinks, (unsigned long long)d.file_bytes);
    fprintf(out, "created_ns: %lld\ncommitted_ns: %lld\nregions: %d\n", (long long)d.created_ns,
            (long long)d.committed_ns, d.regions);
    for (int i = 0; i < fs->nreg; i++) {
        uuid_str(fs->reg[i].uuid, u);
        fprintf(out, "region %d: path=%s base=0x%llx length=%llu first_block=%llu uuid=%s\n", i, fs->reg[i].path,
                (unsigned long long)fs->reg[i].phys_base, (unsigned long long)fs->reg[i].length,
                (unsigned long long)fs->reg[i].first_block, u);
    }
    pf_close(fs);
    return 0;
}

static void ls_dir(struct pf_fs *fs, struct pf_inode *d, const char *prefix, FILE *out, int depth)
{
    if (depth > 4096)
        return;
    for (size_t i = 0; i < d->nent; i++) {
        struct pf_inode *c = pf_get(fs, d->ents[i].ino);
        if (!c)
            continue;
        size_t l = strlen(prefix) + strlen(d->ents[i].name) + 2;
        char *p = malloc(l);
        snprintf(p, l, "%s/%s", prefix, d->ents[i].name);
        char type = S_ISDIR(c->mode) ? 'd' : S_ISLNK(c->mode) ? 'l' : '-';
        fprintf(out, "%c %04o %u:%u %12llu %s%s%s\n", type, c->mode & 07777, c->uid, c->gid,
                (unsigned long long)c->size, p, c->target ? " -> " : "", c->target ? c->target : "");
        if (S_ISDIR(c->mode))
            ls_dir(fs, c, p, out, depth + 1);
        free(p);
    }
}

int pf_ls(const char *regions, FILE *out)
{
    struct pf_report rep = {.out = stderr};
    struct pf_fs *fs = NULL;
    struct open_result res = {0};
    int rc = open_fs(regions, PF_OPEN_RDONLY, false, false, &fs, &res, &rep);
    if (rc)
        return rc;
    ls_dir(fs, fs->inodes[PF_ROOT_INO], "", out, 0);
    pf_close(fs);
    return 0;
}
