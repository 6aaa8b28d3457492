/* The FUSE daemon: serves a libpramfs state through the low-level FUSE API.
 * One thread runs the FUSE loop, one commits every 5 seconds (by default, like
 * ext4's commit=5) when something changed; both hold fs->lock. */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 34
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "pramfs.h"

#define TIMEOUT 1.0
#define MAX_IOV 600

uint64_t pf_pending_blocks(struct pf_fs *fs);

struct daemon_state {
    struct pf_fs *fs;
    pthread_t committer;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;
    bool stop;
    int commit_interval_ms;
    bool blockdev; /* a region is a block device (read through its page cache) */
    char mountpoint[4096]; /* absolute: the background daemon changes to / */
    bool readahead_raised;
};

static struct daemon_state *ds_of(fuse_req_t req) { return fuse_req_userdata(req); }

static void lock(struct pf_fs *fs) { pthread_mutex_lock(&fs->lock); }
static void unlock(struct pf_fs *fs) { pthread_mutex_unlock(&fs->lock); }

static void fill_stat(const struct pf_inode *i, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = i->ino;
    st->st_mode = i->mode;
    st->st_nlink = i->nlink;
    st->st_uid = i->uid;
    st->st_gid = i->gid;
    st->st_size = (off_t)i->size;
    st->st_blksize = PF_BLOCK_SIZE;
    uint64_t blocks = 0;
    for (size_t k = 0; k < i->next; k++)
        blocks += i->ext[k].nblocks;
    st->st_blocks = (blkcnt_t)(blocks * (PF_BLOCK_SIZE / 512));
    st->st_atim.tv_sec = i->atime / 1000000000;
    st->st_atim.tv_nsec = i->atime % 1000000000;
    st->st_mtim.tv_sec = i->mtime / 1000000000;
    st->st_mtim.tv_nsec = i->mtime % 1000000000;
    st->st_ctim.tv_sec = i->ctime / 1000000000;
    st->st_ctim.tv_nsec = i->ctime % 1000000000;
}

static void reply_entry(fuse_req_t req, struct pf_inode *i)
{
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = i->ino;
    e.attr_timeout = TIMEOUT;
    e.entry_timeout = TIMEOUT;
    fill_stat(i, &e.attr);
    i->lookup++;
    fuse_reply_entry(req, &e);
}

static int commit_logged(struct pf_fs *fs)
{
    int rc = pf_commit(fs);
    if (rc)
        fprintf(stderr, "pramfs: commit failed: %s\n", strerror(-rc));
    return rc;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    /* Large writes: CRIU writes page images in big chunks (1 MiB requests). */
    conn->max_write = 1u << 20;
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE; /* fsync must reach us, writes go straight to the region */
}

static void op_destroy(void *userdata)
{
    struct daemon_state *ds = userdata;
    lock(ds->fs);
    if (ds->fs->dirty)
        commit_logged(ds->fs);
    unlock(ds->fs);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *d = pf_get(fs, parent);
    struct pf_inode *i = d && S_ISDIR(d->mode) ? pf_lookup(fs, d, name) : NULL;
    if (i)
        reply_entry(req, i);
    else
        fuse_reply_err(req, d ? ENOENT : ESTALE);
    unlock(fs);
}

static void forget_one(struct pf_fs *fs, fuse_ino_t ino, uint64_t n)
{
    struct pf_inode *i = pf_get(fs, ino);
    if (!i)
        return;
    i->lookup = i->lookup > n ? i->lookup - n : 0;
    pf_maybe_free(fs, i);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    forget_one(fs, ino, n);
    unlock(fs);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    for (size_t k = 0; k < count; k++)
        forget_one(fs, f[k].ino, f[k].nlookup);
    unlock(fs);
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    if (i) {
        struct stat st;
        fill_stat(i, &st);
        fuse_reply_attr(req, &st, TIMEOUT);
    } else {
        fuse_reply_err(req, ESTALE);
    }
    unlock(fs);
}

static int64_t ts_ns(const struct timespec *t) { return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec; }

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    (void)fi;
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    int rc = i ? 0 : -ESTALE;
    if (!rc && (to_set & FUSE_SET_ATTR_SIZE))
        rc = pf_truncate(fs, i, (uint64_t)attr->st_size);
    if (!rc) {
        if (to_set & FUSE_SET_ATTR_MODE)
            i->mode = (i->mode & S_IFMT) | (attr->st_mode & 07777);
        if (to_set & FUSE_SET_ATTR_UID)
            i->uid = attr->st_uid;
        if (to_set & FUSE_SET_ATTR_GID)
            i->gid = attr->st_gid;
        if (to_set & FUSE_SET_ATTR_ATIME_NOW)
            i->atime = pf_now();
        else if (to_set & FUSE_SET_ATTR_ATIME)
            i->atime = ts_ns(&attr->st_atim);
        if (to_set & FUSE_SET_ATTR_MTIME_NOW)
            i->mtime = pf_now();
        else if (to_set & FUSE_SET_ATTR_MTIME)
            i->mtime = ts_ns(&attr->st_mtim);
        pf_touch(i, false, true);
        fs->dirty = true;
        struct stat st;
        fill_stat(i, &st);
        fuse_reply_attr(req, &st, TIMEOUT);
    } else {
        fuse_reply_err(req, -rc);
    }
    unlock(fs);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    if (i && S_ISLNK(i->mode))
        fuse_reply_readlink(req, i->target);
    else
        fuse_reply_err(req, i ? EINVAL : ESTALE);
    unlock(fs);
}

/* The kernel reads a FUSE file ahead in requests of at most its readahead size,
 * 128 KiB, whatever max_read the daemon asks for; sequential reads of large files
 * (CRIU restoring page images) take a round trip per 128 KiB. Raise it to 1 MiB for
 * this mount through sysfs (root only; without it reads just take more requests).
 * Done at the first open: the kernel sets the readahead size from the INIT reply
 * (so not before it) and a file takes it when opened. The mount's device number
 * comes from mountinfo: a stat of DIR would wait for this daemon. */
static void raise_readahead(const char *real)
{
    char line[8192];
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return;
    unsigned maj = 0, min = 0;
    bool found = false;
    while (fgets(line, sizeof line, f)) {
        char mnt[4096];
        unsigned a, b;
        /* "ID PARENT MAJ:MIN ROOT MOUNTPOINT ..."; the last matching line is the newest mount */
        if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &a, &b, mnt) == 3 && strcmp(mnt, real) == 0 &&
            strstr(line, " - fuse")) {
            maj = a;
            min = b;
            found = true;
        }
    }
    fclose(f);
    if (!found)
        return;
    char path[128];
    snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/read_ahead_kb", maj, min);
    FILE *ra = fopen(path, "w");
    if (ra) {
        fputs("1024", ra);
        fclose(ra);
    }
}

static void first_open(struct daemon_state *ds)
{
    if (!ds->readahead_raised) {
        ds->readahead_raised = true;
        raise_readahead(ds->mountpoint);
    }
}

/* Write-only handles (CRIU writes every image through one, often with splice) use
 * direct I/O: the writer's data goes from its own pages to us, not first into a copy
 * in the kernel's page cache of this file; that copy cost more than half of a large
 * write. Such writes leave whatever the kernel cached of the file stale, so the next
 * open for reading does not keep the cache (the kernel drops it then), and neither
 * does one while a write-only handle is open. A handle that was already open for
 * reading keeps pages it cached before the write (as with any FUSE direct I/O). */
static void set_cache_mode(struct pf_inode *i, struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) == O_WRONLY) {
        fi->direct_io = 1;
        i->direct_opens++;
        i->direct_written = true;
        return;
    }
    fi->keep_cache = !i->direct_written; /* only we change file content, through the kernel that caches it */
    if (i->direct_opens == 0)
        i->direct_written = false;
}

static void make_node(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, const char *target,
                      struct fuse_file_info *fi)
{
    struct pf_fs *fs = ds_of(req)->fs;
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    lock(fs);
    struct pf_inode *d = pf_get(fs, parent);
    struct pf_inode *i = NULL;
    int rc = d ? 0 : -ESTALE;
    if (!rc) {
        uint32_t gid = (d->mode & S_ISGID) ? d->gid : ctx->gid;
        if (S_ISDIR(mode) && (d->mode & S_ISGID))
            mode |= S_ISGID;
        rc = pf_create(fs, d, name, mode, ctx->uid, gid, target, &i);
    }
    if (rc) {
        fuse_reply_err(req, -rc);
    } else if (fi) {
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        e.ino = i->ino;
        e.attr_timeout = e.entry_timeout = TIMEOUT;
        fill_stat(i, &e.attr);
        i->lookup++;
        i->opens++;
        fi->fh = 0;
        set_cache_mode(i, fi);
        first_open(ds_of(req));
        if (fuse_reply_create(req, &e, fi) != 0) {
            i->opens--;
            i->lookup--;
            if (fi->direct_io)
                i->direct_opens--;
        }
    } else {
        reply_entry(req, i);
    }
    unlock(fs);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    (void)rdev;
    make_node(req, parent, name, mode & ~(mode_t)fuse_req_ctx(req)->umask, NULL, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    make_node(req, parent, name, S_IFDIR | (mode & 07777 & ~(mode_t)fuse_req_ctx(req)->umask), NULL, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    make_node(req, parent, name, S_IFLNK | 0777, link, NULL);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    make_node(req, parent, name, S_IFREG | (mode & 07777 & ~(mode_t)fuse_req_ctx(req)->umask), NULL, fi);
}

static void op_unlink_common(fuse_req_t req, fuse_ino_t parent, const char *name, bool dir)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *d = pf_get(fs, parent);
    int rc = d ? pf_unlink(fs, d, name, dir) : -ESTALE;
    fuse_reply_err(req, -rc);
    unlock(fs);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) { op_unlink_common(req, parent, name, false); }
static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) { op_unlink_common(req, parent, name, true); }

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
                      unsigned int flags)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *a = pf_get(fs, parent), *b = pf_get(fs, newparent);
    int rc = a && b ? pf_rename(fs, a, name, b, newname, flags) : -ESTALE;
    fuse_reply_err(req, -rc);
    unlock(fs);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino), *d = pf_get(fs, newparent);
    int rc = i && d ? pf_link(fs, i, d, newname) : -ESTALE;
    if (rc)
        fuse_reply_err(req, -rc);
    else
        reply_entry(req, i);
    unlock(fs);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    if (!i) {
        fuse_reply_err(req, ESTALE);
    } else if (S_ISDIR(i->mode)) {
        fuse_reply_err(req, EISDIR);
    } else {
        i->opens++;
        set_cache_mode(i, fi);
        first_open(ds_of(req));
        if (fuse_reply_open(req, fi) != 0) {
            i->opens--;
            if (fi->direct_io)
                i->direct_opens--;
        }
    }
    unlock(fs);
}

/* A block device region (pmem) is mapped through its page cache: let the kernel read
 * the whole reply's pages in large requests instead of one page fault at a time
 * while the reply is copied. */
static void prefetch(const struct iovec *iov, int n)
{
    long page = sysconf(_SC_PAGESIZE);
    for (int k = 0; k < n; k++) {
        uintptr_t a = (uintptr_t)iov[k].iov_base, start = a & ~(uintptr_t)(page - 1);
        if (iov[k].iov_len && madvise((void *)start, a + iov[k].iov_len - start, MADV_WILLNEED) != 0)
            return; /* the zero page for holes, or no support: only a hint */
    }
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    struct pf_fs *fs = ds_of(req)->fs;
    struct iovec iov[MAX_IOV];
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    if (!i) {
        fuse_reply_err(req, ESTALE);
    } else {
        size_t total;
        int n = pf_read_iov(fs, i, size, (uint64_t)off, iov, MAX_IOV, &total);
        if (ds_of(req)->blockdev)
            prefetch(iov, n);
        /* The iovecs point into the mapped region: reply before anything can change it. */
        fuse_reply_iov(req, iov, n);
    }
    unlock(fs);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    ssize_t rc = i ? pf_write(fs, i, buf, size, (uint64_t)off) : -ESTALE;
    if (rc < 0)
        fuse_reply_err(req, (int)-rc);
    else
        fuse_reply_write(req, (size_t)rc);
    unlock(fs);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    if (i) {
        if (i->opens)
            i->opens--;
        if ((fi->flags & O_ACCMODE) == O_WRONLY && i->direct_opens)
            i->direct_opens--;
        pf_maybe_free(fs, i);
    }
    unlock(fs);
    fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    (void)datasync;
    (void)fi;
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    /* A commit makes everything durable, not only this file: simple and still cheap. */
    int rc = fs->dirty ? commit_logged(fs) : 0;
    unlock(fs);
    fuse_reply_err(req, -rc);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *i = pf_get(fs, ino);
    if (!i)
        fuse_reply_err(req, ESTALE);
    else if (!S_ISDIR(i->mode))
        fuse_reply_err(req, ENOTDIR);
    else
        fuse_reply_open(req, fi);
    unlock(fs);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    struct pf_fs *fs = ds_of(req)->fs;
    lock(fs);
    struct pf_inode *d = pf_get(fs, ino);
    if (!d) {
        fuse_reply_err(req, ESTALE);
        unlock(fs);
        return;
    }
    char *buf = malloc(size);
    size_t used = 0;
    /* offsets: 1 = ".", 2 = "..", k + 3 = entry k */
    for (uint64_t k = (uint64_t)off; buf; k++) {
        struct stat st;
        memset(&st, 0, sizeof st);
        const char *name;
        if (k == 0) {
            name = ".";
            st.st_ino = d->ino;
            st.st_mode = S_IFDIR;
        } else if (k == 1) {
            name = "..";
            st.st_ino = d->parent;
            st.st_mode = S_IFDIR;
        } else if (k - 2 < d->nent) {
            name = d->ents[k - 2].name;
            struct pf_inode *c = pf_get(fs, d->ents[k - 2].ino);
            st.st_ino = d->ents[k - 2].ino;
            st.st_mode = c ? c->mode & S_IFMT : 0;
        } else {
            break;
        }
        size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)(k + 1));
        if (need > size - used)
            break;
        used += need;
    }
    if (buf)
        fuse_reply_buf(req, buf, used);
    else
        fuse_reply_err(req, ENOMEM);
    free(buf);
    unlock(fs);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    struct pf_fs *fs = ds_of(req)->fs;
    struct statvfs s;
    memset(&s, 0, sizeof s);
    lock(fs);
    uint64_t reserved = 2 + 2 * fs->meta_area_blocks + (uint64_t)(fs->nreg - 1);
    s.f_bsize = PF_BLOCK_SIZE;
    s.f_frsize = PF_BLOCK_SIZE;
    s.f_blocks = fs->total_blocks - reserved;
    /* Blocks waiting for the next commit are free for writers: an allocation that needs them commits first. */
    s.f_bfree = s.f_bavail = fs->free_blocks + pf_pending_blocks(fs);
    uint64_t used = pf_used_inodes(fs);
    /* Inodes are limited by the metadata area; a small record takes about 128 bytes. */
    uint64_t cap = fs->meta_area_blocks * PF_BLOCK_SIZE / 128;
    s.f_files = cap > used ? cap : used;
    s.f_ffree = s.f_favail = cap > used ? cap - used : 0;
    s.f_namemax = PF_NAME_MAX;
    unlock(fs);
    fuse_reply_statfs(req, &s);
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .destroy = op_destroy,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsync,
    .statfs = op_statfs,
    .create = op_create,
};

static void *committer(void *arg)
{
    struct daemon_state *ds = arg;
    pthread_mutex_lock(&ds->stop_lock);
    while (!ds->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)ds->commit_interval_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&ds->stop_cond, &ds->stop_lock, &ts);
        if (ds->stop)
            break;
        pthread_mutex_unlock(&ds->stop_lock);
        lock(ds->fs);
        if (ds->fs->dirty)
            commit_logged(ds->fs);
        unlock(ds->fs);
        pthread_mutex_lock(&ds->stop_lock);
    }
    pthread_mutex_unlock(&ds->stop_lock);
    return NULL;
}

/* pramfs mount [-f] [-o OPTS] [--commit-interval MS] REGION DIR */
int pf_mount_main(int argc, char **argv);
int pf_mount_main(int argc, char **argv)
{
    bool foreground = false;
    const char *extra = NULL, *regions = NULL, *dir = NULL;
    int interval = 5000;
    for (int k = 0; k < argc; k++) {
        if (strcmp(argv[k], "-f") == 0)
            foreground = true;
        else if (strcmp(argv[k], "-o") == 0 && k + 1 < argc)
            extra = argv[++k];
        else if (strcmp(argv[k], "--commit-interval") == 0 && k + 1 < argc)
            interval = atoi(argv[++k]);
        else if (!regions)
            regions = argv[k];
        else if (!dir)
            dir = argv[k];
        else {
            fprintf(stderr, "pramfs mount: unexpected argument '%s'\n", argv[k]);
            return 2;
        }
    }
    if (!regions || !dir || interval < 10) {
        fprintf(stderr, "usage: pramfs mount [-f] [-o FUSE_OPTIONS] [--commit-interval MS] REGION[,REGION...] DIR\n");
        return 2;
    }
    struct pf_report rep = {.out = stderr};
    struct pf_fs *fs = NULL;
    int rc = pf_open(regions, 0, &fs, &rep);
    if (rc) {
        fprintf(stderr, "pramfs mount: cannot open %s: %s%s\n", regions, rep.first[0] ? rep.first : strerror(-rc),
                rc == -EUCLEAN ? " (run pramfs fsck -r)" : "");
        return 1;
    }
    struct daemon_state ds = {.fs = fs, .commit_interval_ms = interval};
    if (!realpath(dir, ds.mountpoint))
        ds.readahead_raised = true; /* cannot find it in mountinfo; the mount itself reports the error */
    for (int r = 0; r < fs->nreg; r++)
        ds.blockdev |= fs->reg[r].is_blockdev;
    pthread_mutex_init(&ds.stop_lock, NULL);
    pthread_cond_init(&ds.stop_cond, NULL);
    char opts[1024];
    snprintf(opts, sizeof opts, "fsname=pramfs,subtype=pramfs,default_permissions%s%s%s",
             geteuid() == 0 ? ",allow_other" : "", extra ? "," : "", extra ? extra : "");
    char *fargv[] = {"pramfs", "-o", opts, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, &ds);
    int status = 1;
    if (!se) {
        fprintf(stderr, "pramfs mount: cannot create the FUSE session (options: %s)\n", opts);
        goto out_close;
    }
    if (fuse_set_signal_handlers(se) != 0)
        goto out_session;
    if (fuse_session_mount(se, dir) != 0) {
        fprintf(stderr, "pramfs mount: cannot mount on %s (is /dev/fuse there and the folder empty and not mounted?)\n",
                dir);
        goto out_signals;
    }
    /* In the background, the parent returns only once the mount exists. */
    if (fuse_daemonize(foreground) != 0)
        goto out_unmount;
    if (pthread_create(&ds.committer, NULL, committer, &ds) != 0)
        goto out_unmount;
    status = fuse_session_loop(se) < 0 ? 1 : 0;
    pthread_mutex_lock(&ds.stop_lock);
    ds.stop = true;
    pthread_cond_signal(&ds.stop_cond);
    pthread_mutex_unlock(&ds.stop_lock);
    pthread_join(ds.committer, NULL);
    lock(fs);
    if (fs->dirty && commit_logged(fs) != 0)
        status = 1;
    unlock(fs);
out_unmount:
    fuse_session_unmount(se);
out_signals:
    fuse_remove_signal_handlers(se);
out_session:
    fuse_session_destroy(se);
out_close:
    fuse_opt_free_args(&args);
    pf_close(fs);
    return status;
}
