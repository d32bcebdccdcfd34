/*
 * segue-check: the guest-side workload and memory checker of Segue.
 *
 * Runs inside the test guest (started by the initramfs /init). It owns three memory regions:
 *   hot     pages rewritten continuously at a configurable rate; each page holds its index and
 *           a counter, and every rewrite first checks that the page still holds exactly what the
 *           previous write left (a lost or stale page after a migration shows up as an error);
 *   pattern pages filled once at start with data derived from the page index and the boot id;
 *   zero    pages that must stay all zero.
 * With segue.disk=<block device> it also keeps a disk journal: a writer appends numbered,
 * checksummed records at segue.disk_rate records per second, each counted as acknowledged only
 * once the device confirmed it (O_DIRECT|O_SYNC), and VERIFY reads the whole device back (see
 * "disk journal" below for the layout and the rules).
 * It answers a small ASCII UDP protocol (PING, VERIFY, RATE), writes a heartbeat line to the
 * console every heartbeat period, and runs a verification when the console sends "verify".
 *
 * Configuration comes from the kernel command line (segue.port, segue.hot_mib,
 * segue.dirty_mbps, segue.pattern_mib, segue.zero_mib, segue.heartbeat_ms, segue.disk,
 * segue.disk_rate). For testing on a host, "--cmdline FILE" reads the keys from FILE and
 * "--console PATH" replaces /dev/console; segue.disk may then name a regular file.
 *
 * Build: gcc -static -O2 -pthread -Wall -Wextra -o segue-check segue-check.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define PAGE_WORDS (PAGE_SIZE / sizeof(uint64_t))
#define PAGES_PER_MIB 256u
#define GOLDEN 0x9E3779B97F4A7C15ull
#define PATTERN_SALT 0x5EC0E5A17E12A7B5ull
#define TICK_MS 5              /* writer sleeps this long between batches */
#define LOCK_BATCH 64          /* pages handled per hold of the hot-region lock */
#define MAX_BURST_MS 50        /* a late writer catches up at most this much work */
#define MAX_VERIFIERS 4        /* concurrent VERIFY requests served at once */
#define LINE_MAX_LEN 512
#define UDP_PRIORITY 20        /* SCHED_FIFO priorities: replies and heartbeats preempt the */
#define HEARTBEAT_PRIORITY 10  /* CPU-bound writer and verifiers at once on a single vCPU */
#define DISK_PATH_MAX 256

struct config {
    long port, hot_mib, dirty_mbps, pattern_mib, zero_mib, heartbeat_ms, disk_rate;
    char disk[DISK_PATH_MAX]; /* empty: no disk journal */
};

struct region {
    uint64_t *mem;
    size_t pages;
};

struct verify_report {
    uint64_t hot_errors, pattern_errors, zero_errors;
};

static struct config cfg = {7777, 16, 0, 16, 8, 50, 50, ""};
static uint64_t boot_id;
static struct region hot, pattern, zero;
static uint64_t *hot_expected; /* the counter each hot page must hold */
static pthread_mutex_t hot_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t console_lock = PTHREAD_MUTEX_INITIALIZER;
static int console_fd = -1;
static int udp_fd = -1;
static atomic_uint_fast64_t passes, errors, replies, dirtied_pages;
static atomic_long dirty_rate;
static atomic_int verifiers;

/* ---- small helpers ------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Writes one whole line to the console; lines from different threads never interleave. */
static void console_line(const char *fmt, ...)
{
    char buf[LINE_MAX_LEN];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(buf) - 3)
        n = (int)sizeof(buf) - 3;
    buf[n++] = '\r';
    buf[n++] = '\n';
    pthread_mutex_lock(&console_lock);
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(console_fd, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += w;
    }
    pthread_mutex_unlock(&console_lock);
}

/*
 * Gives the calling thread a real-time priority. These threads only ever block (recvfrom,
 * clock_nanosleep) or do a few microseconds of work, so they cannot starve the others. Failure
 * (not root, e.g. when testing on a host) only costs latency.
 */
static void realtime_thread(int priority)
{
    struct sched_param sp = {.sched_priority = priority};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
}

/* ---- configuration -------------------------------------------------------------------- */

/*
 * The value of the last segue.<key>= in the command line text (the kernel's own rule), or NULL
 * when the key is absent. The value runs to the next blank or the end of the text.
 */
static const char *cmdline_find(const char *text, const char *key)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "segue.%s=", key);
    size_t len = strlen(needle);
    const char *found = NULL;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += len)
        if (p == text || p[-1] == ' ' || p[-1] == '\t')
            found = p + len;
    return found;
}

/* Reads segue.<key>=<n>; returns def when absent, or when the value is malformed or above max. */
static long cmdline_long(const char *text, const char *key, long def, long max)
{
    const char *found = cmdline_find(text, key);
    if (found == NULL)
        return def;
    char *end;
    errno = 0;
    long v = strtol(found, &end, 10);
    if (errno == 0 && end != found && v >= 0 && v <= max &&
        (*end == '\0' || *end == ' ' || *end == '\n' || *end == '\t'))
        return v;
    fprintf(stderr, "segue-check: bad value for segue.%s, using %ld\n", key, def);
    return def;
}

/* Copies segue.<key>=<text> into out (empty when absent); a value too long for out is dropped. */
static void cmdline_text(const char *text, const char *key, char *out, size_t size)
{
    const char *found = cmdline_find(text, key);
    size_t len = found == NULL ? 0 : strcspn(found, " \t\n");
    out[0] = '\0';
    if (len >= size) {
        fprintf(stderr, "segue-check: segue.%s is longer than %zu characters, ignored\n", key,
                size - 1);
        return;
    }
    if (len > 0) {
        memcpy(out, found, len);
        out[len] = '\0';
    }
}

static void load_config(const char *path)
{
    char text[4096] = "";
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, text, sizeof(text) - 1);
        text[n > 0 ? n : 0] = '\0';
        close(fd);
    } else {
        fprintf(stderr, "segue-check: cannot read %s: %s\n", path, strerror(errno));
    }
    cfg.port = cmdline_long(text, "port", cfg.port, 65535);
    cfg.hot_mib = cmdline_long(text, "hot_mib", cfg.hot_mib, 65536);
    cfg.dirty_mbps = cmdline_long(text, "dirty_mbps", cfg.dirty_mbps, 1000000);
    cfg.pattern_mib = cmdline_long(text, "pattern_mib", cfg.pattern_mib, 65536);
    cfg.zero_mib = cmdline_long(text, "zero_mib", cfg.zero_mib, 65536);
    cfg.heartbeat_ms = cmdline_long(text, "heartbeat_ms", cfg.heartbeat_ms, 3600000);
    if (cfg.heartbeat_ms == 0)
        cfg.heartbeat_ms = 50;
    cfg.disk_rate = cmdline_long(text, "disk_rate", cfg.disk_rate, 100000);
    cmdline_text(text, "disk", cfg.disk, sizeof(cfg.disk));
}

/* A random id per boot, never blocking on the entropy pool (it only tells boots apart). */
static uint64_t make_boot_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof(id), GRND_INSECURE) != (ssize_t)sizeof(id) &&
        getrandom(&id, sizeof(id), GRND_NONBLOCK) != (ssize_t)sizeof(id)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        id = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)getpid());
    }
    return id;
}

/* ---- page contents -------------------------------------------------------------------- */

static uint64_t *page_at(const struct region *r, size_t i)
{
    return r->mem + i * PAGE_WORDS;
}

/* Hot page i holding counter c: word 0 is i, word 1 is c, the rest derive from (boot, i, c). */
static void hot_fill(uint64_t *p, size_t i, uint64_t c)
{
    uint64_t seed = mix64(boot_id ^ mix64(((uint64_t)i << 32) ^ c));
    p[0] = i;
    p[1] = c;
    for (size_t w = 2; w < PAGE_WORDS; w++)
        p[w] = seed + w * GOLDEN;
}

static int hot_ok(const uint64_t *p, size_t i, uint64_t c)
{
    uint64_t seed = mix64(boot_id ^ mix64(((uint64_t)i << 32) ^ c));
    if (p[0] != i || p[1] != c)
        return 0;
    for (size_t w = 2; w < PAGE_WORDS; w++)
        if (p[w] != seed + w * GOLDEN)
            return 0;
    return 1;
}

static uint64_t pattern_word(size_t i, size_t w)
{
    return w == 0 ? i : mix64(boot_id ^ PATTERN_SALT ^ (uint64_t)i) + w * GOLDEN;
}

static int pattern_ok(const uint64_t *p, size_t i)
{
    for (size_t w = 0; w < PAGE_WORDS; w++)
        if (p[w] != pattern_word(i, w))
            return 0;
    return 1;
}

static int zero_ok(const uint64_t *p)
{
    uint64_t acc = 0;
    for (size_t w = 0; w < PAGE_WORDS; w++)
        acc |= p[w];
    return acc == 0;
}

/* Maps a region of mib MiB, backed by real pages (written, not just reserved). */
static void region_alloc(struct region *r, long mib, const char *name)
{
    r->pages = (size_t)mib * PAGES_PER_MIB;
    if (r->pages == 0)
        return;
    void *m = mmap(NULL, r->pages * PAGE_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (m == MAP_FAILED) {
        console_line("SEGUE-CHECK FATAL cannot map %s region (%ld MiB): %s", name, mib,
                     strerror(errno));
        exit(2);
    }
    r->mem = m;
}

static void regions_init(void)
{
    region_alloc(&hot, cfg.hot_mib, "hot");
    region_alloc(&pattern, cfg.pattern_mib, "pattern");
    region_alloc(&zero, cfg.zero_mib, "zero");
    hot_expected = calloc(hot.pages ? hot.pages : 1, sizeof(uint64_t));
    if (hot_expected == NULL) {
        console_line("SEGUE-CHECK FATAL out of memory");
        exit(2);
    }
    for (size_t i = 0; i < hot.pages; i++)
        hot_fill(page_at(&hot, i), i, 0);
    for (size_t i = 0; i < pattern.pages; i++)
        for (size_t w = 0; w < PAGE_WORDS; w++)
            page_at(&pattern, i)[w] = pattern_word(i, w);
    if (zero.pages)
        memset(zero.mem, 0, zero.pages * PAGE_SIZE);
}

/* ---- disk journal --------------------------------------------------------------------- */

/*
 * Layout of the device: a header block at offset 0 (DISK_RECORD bytes: magic, version, the
 * boot id of the boot that owns the journal, record size, first record's offset, slot count,
 * checksum), then record slots of DISK_RECORD bytes from DISK_START. Record seq n (from 1)
 * lives in slot n-1 and holds: magic, boot id, seq, uptime in ms when written, payload words
 * derived from (boot id, seq), and a checksum over all of it in its last word.
 *
 * Every boot starts a fresh journal: it rewrites the header with its own boot id and writes
 * from slot 0; what an earlier boot left further on carries another boot id and is ignored.
 * The writer appends one record at a time and counts it acknowledged (disk.acked) only after
 * the write returned: the device is opened O_DIRECT|O_SYNC, so that means the device (QEMU)
 * confirmed it, flush included. On a filesystem that refuses O_DIRECT (tmpfs, when testing on
 * a host) it falls back to O_SYNC writes and drops the page cache before each verification.
 * When the last slot is written the writer stops (disk.full); it never wraps around.
 *
 * Verification reads the header and every slot of the device, a chunk at a time, while the
 * writer runs on. With Ab = acked just before a chunk was read and An = acked right after,
 * slot s (record seq s+1) of that chunk must hold:
 *   s <  Ab        exactly record s+1 of this boot, stamped no earlier than the one before
 *                  (the device confirmed it before the read began: anything else is a lost,
 *                  stale, torn, duplicated or misplaced record);
 *   Ab <= s <= An  record s+1 of this boot, or anything not of this boot (written during the
 *                  read, or not yet: it may show either way, or torn);
 *   s >  An        nothing of this boot (a record there was never acknowledged nor in flight).
 * The reply's disk_acked is acked when the verification began: every record up to it was found.
 */
#define DISK_RECORD 512u
#define DISK_WORDS (DISK_RECORD / sizeof(uint64_t))
#define DISK_START 4096u        /* first record slot; the header block lies before it */
#define DISK_ALIGN 4096u        /* buffer alignment O_DIRECT accepts on every device */
#define DISK_CHUNK (1u << 20)   /* verification reads this much at a time */
#define DISK_MAGIC 0x4345524555474553ull    /* "SEGUEREC" */
#define JOURNAL_MAGIC 0x4C4E4A4555474553ull /* "SEGUEJNL" */
#define JOURNAL_VERSION 1u
#define DISK_SALT 0xD15C0DE5EED5A17Full
#define DISK_OPEN_WAIT_MS 5000  /* the device node may appear a little after the checker starts */
#define DISK_REPORTED_ERRORS 3  /* bad slots described on the console per verification */
#define DISK_CATCH_UP_MS 1000   /* a writer late by more than this skips ahead, no burst */

enum slot_kind { SLOT_OURS, SLOT_TORN, SLOT_OTHER };

struct journal {
    int fd;                /* -1: no journal (none configured, or it failed) */
    int direct;            /* opened with O_DIRECT */
    uint64_t slots;        /* records the device holds */
    uint64_t *record;      /* the writer's aligned record buffer */
    atomic_uint_fast64_t acked;    /* seq of the last acknowledged record */
    atomic_uint_fast64_t failures; /* open, header and write failures since boot */
    atomic_int full;
};

struct disk_report {
    uint64_t records, acked, errors;
    int full;
};

static struct journal disk = {.fd = -1};

static uint64_t words_hash(const uint64_t *r, size_t words)
{
    uint64_t h = DISK_SALT;
    for (size_t w = 0; w < words; w++)
        h = mix64(h ^ r[w]);
    return h;
}

static uint64_t record_seed(uint64_t seq)
{
    return mix64(boot_id ^ mix64(seq ^ DISK_SALT));
}

static void record_fill(uint64_t *r, uint64_t seq, uint64_t stamp)
{
    uint64_t seed = record_seed(seq);
    r[0] = DISK_MAGIC;
    r[1] = boot_id;
    r[2] = seq;
    r[3] = stamp;
    for (size_t w = 4; w < DISK_WORDS - 1; w++)
        r[w] = seed + w * GOLDEN;
    r[DISK_WORDS - 1] = words_hash(r, DISK_WORDS - 1);
}

/* SLOT_OURS: an intact record of this boot; SLOT_TORN: this boot's, but damaged. */
static enum slot_kind record_kind(const uint64_t *r)
{
    if (r[0] != DISK_MAGIC || r[1] != boot_id)
        return SLOT_OTHER;
    if (r[DISK_WORDS - 1] != words_hash(r, DISK_WORDS - 1))
        return SLOT_TORN;
    uint64_t seed = record_seed(r[2]);
    for (size_t w = 4; w < DISK_WORDS - 1; w++)
        if (r[w] != seed + w * GOLDEN)
            return SLOT_TORN;
    return SLOT_OURS;
}

static void header_fill(uint64_t *h)
{
    memset(h, 0, DISK_RECORD);
    h[0] = JOURNAL_MAGIC;
    h[1] = JOURNAL_VERSION;
    h[2] = boot_id;
    h[3] = DISK_RECORD;
    h[4] = DISK_START;
    h[5] = disk.slots;
    h[DISK_WORDS - 1] = words_hash(h, DISK_WORDS - 1);
}

static int header_ok(const uint64_t *h)
{
    uint64_t want[DISK_WORDS];
    header_fill(want);
    return memcmp(h, want, DISK_RECORD) == 0;
}

static void *aligned_buffer(size_t size)
{
    void *p = NULL;
    return posix_memalign(&p, DISK_ALIGN, size) == 0 ? p : NULL;
}

/* Counts a failure of the journal (an error of the whole check) and says why on the console. */
static void journal_failed(const char *fmt, ...)
{
    char buf[LINE_MAX_LEN - 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    atomic_fetch_add(&disk.failures, 1);
    atomic_fetch_add(&errors, 1);
    console_line("SEGUE-CHECK DISK FAILED %s", buf);
}

static int full_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static int full_pread(int fd, void *buf, size_t len, off_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0) {
            errno = EIO; /* the device shrank under us */
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/*
 * Opens the journal device, O_DIRECT when its filesystem allows it, waiting up to
 * DISK_OPEN_WAIT_MS for the node to appear. Returns the fd, or -1 with errno set.
 */
static int journal_open(const char *path, int *direct)
{
    uint64_t deadline = now_ms() + DISK_OPEN_WAIT_MS;
    for (;;) {
        int fd = open(path, O_RDWR | O_DIRECT | O_SYNC | O_CLOEXEC);
        *direct = fd >= 0;
        if (fd < 0 && errno == EINVAL)
            fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
        if (fd >= 0 || errno != ENOENT || now_ms() >= deadline)
            return fd;
        sleep_ms(50);
    }
}

/* Tells on the console whose journal the device held before this boot replaces it. */
static void journal_note_previous(int fd)
{
    uint64_t *h = aligned_buffer(DISK_START);
    if (h != NULL && full_pread(fd, h, DISK_START, 0) == 0 && h[0] == JOURNAL_MAGIC &&
        h[DISK_WORDS - 1] == words_hash(h, DISK_WORDS - 1))
        console_line("SEGUE-CHECK DISK replacing the journal of boot=%016" PRIx64, h[2]);
    free(h);
}

/*
 * Writes this boot's header; a device that refuses O_DIRECT writes of DISK_RECORD bytes
 * (EINVAL: a larger logical block) is reopened without O_DIRECT. Returns 0 or -1 (errno set).
 */
static int journal_start(const char *path)
{
    header_fill(disk.record);
    if (full_pwrite(disk.fd, disk.record, DISK_RECORD, 0) == 0)
        return 0;
    if (errno != EINVAL || !disk.direct)
        return -1;
    close(disk.fd);
    disk.direct = 0;
    disk.fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
    if (disk.fd < 0)
        return -1;
    return full_pwrite(disk.fd, disk.record, DISK_RECORD, 0);
}

/* Opens the configured device and starts a fresh journal on it; failures are counted. */
static void journal_init(void)
{
    if (cfg.disk[0] == '\0')
        return;
    disk.record = aligned_buffer(DISK_RECORD);
    if (disk.record == NULL) {
        journal_failed("out of memory for %s", cfg.disk);
        return;
    }
    disk.fd = journal_open(cfg.disk, &disk.direct);
    if (disk.fd < 0) {
        journal_failed("cannot open %s: %s", cfg.disk, strerror(errno));
        return;
    }
    off_t size = lseek(disk.fd, 0, SEEK_END);
    if (size < (off_t)(DISK_START + DISK_RECORD)) {
        journal_failed("%s is too small (%lld bytes, at least %u needed)", cfg.disk,
                       (long long)size, DISK_START + DISK_RECORD);
    } else {
        disk.slots = ((uint64_t)size - DISK_START) / DISK_RECORD;
        journal_note_previous(disk.fd);
        if (journal_start(cfg.disk) == 0)
            return;
        journal_failed("cannot write the journal header to %s: %s", cfg.disk, strerror(errno));
    }
    if (disk.fd >= 0)
        close(disk.fd);
    disk.fd = -1;
    disk.direct = 0;
    disk.slots = 0;
}

/* Appends records at disk_rate per second until the device is full or a write fails. */
static void *journal_main(void *arg)
{
    (void)arg;
    long period_ns = 1000000000L / cfg.disk_rate;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (uint64_t seq = 1;; seq++) {
        if (seq > disk.slots) {
            atomic_store(&disk.full, 1);
            console_line("SEGUE-CHECK DISK FULL records=%" PRIu64, disk.slots);
            return NULL;
        }
        record_fill(disk.record, seq, now_ms());
        off_t off = (off_t)(DISK_START + (seq - 1) * DISK_RECORD);
        if (full_pwrite(disk.fd, disk.record, DISK_RECORD, off) != 0) {
            journal_failed("writing record %" PRIu64 " to %s: %s", seq, cfg.disk,
                           strerror(errno));
            return NULL;
        }
        atomic_store(&disk.acked, seq);
        next.tv_nsec += period_ns;
        next.tv_sec += next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long late_ms = (long long)(now.tv_sec - next.tv_sec) * 1000 +
                            (now.tv_nsec - next.tv_nsec) / 1000000;
        if (late_ms > DISK_CATCH_UP_MS)
            next = now;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
    }
    return NULL;
}

struct disk_scan {
    uint64_t acked_at_start;
    uint64_t acked_before_read; /* Ab of the chunk being judged */
    uint64_t records, errors, last_stamp;
    int reported;
};

static void slot_error(struct disk_scan *s, uint64_t slot, const char *what, const uint64_t *r)
{
    s->errors++;
    if (s->reported++ < DISK_REPORTED_ERRORS)
        console_line("SEGUE-CHECK DISK ERROR slot=%" PRIu64 " acked=%" PRIu64 " %s (magic=%016"
                     PRIx64 " boot=%016" PRIx64 " seq=%" PRIu64 ")", slot,
                     s->acked_before_read, what, r[0], r[1], r[2]);
}

/* Judges slot s by the rules above; acked_now is An for the chunk holding it. */
static void check_slot(struct disk_scan *s, uint64_t slot, const uint64_t *r, uint64_t acked_now)
{
    enum slot_kind kind = record_kind(r);
    if (slot >= s->acked_before_read && kind != SLOT_OURS &&
        (kind == SLOT_OTHER || slot <= acked_now))
        return; /* not written yet, or caught mid-write; a stray one is judged below */
    if (slot > acked_now) {
        slot_error(s, slot, "record beyond the acknowledged end", r);
        return;
    }
    if (kind != SLOT_OURS) {
        slot_error(s, slot, kind == SLOT_TORN ? "acknowledged record damaged"
                                              : "acknowledged record missing", r);
    } else if (r[2] != slot + 1) {
        slot_error(s, slot, "record out of place (duplicated or reordered)", r);
    } else if (r[3] < s->last_stamp) {
        slot_error(s, slot, "record older than the one before it", r);
    } else {
        s->records++;
        s->last_stamp = r[3];
    }
}

/* Reads the whole journal back and judges every slot; see the rules at the top of this part. */
static void verify_disk(struct disk_report *rep)
{
    memset(rep, 0, sizeof(*rep));
    rep->full = atomic_load(&disk.full);
    if (disk.fd < 0) {
        rep->errors = atomic_load(&disk.failures);
        return;
    }
    struct disk_scan s = {.acked_at_start = atomic_load(&disk.acked)};
    uint64_t *buf = aligned_buffer(DISK_CHUNK);
    if (!disk.direct) /* read what the device holds, not what the page cache kept */
        posix_fadvise(disk.fd, 0, 0, POSIX_FADV_DONTNEED);
    if (buf == NULL || full_pread(disk.fd, buf, DISK_START, 0) != 0) {
        s.errors++;
        console_line("SEGUE-CHECK DISK ERROR cannot read %s: %s", cfg.disk,
                     buf == NULL ? "out of memory" : strerror(errno));
    } else if (!header_ok(buf)) {
        s.errors++;
        console_line("SEGUE-CHECK DISK ERROR the journal header is not this boot's (magic=%016"
                     PRIx64 " boot=%016" PRIx64 ")", buf[0], buf[2]);
    }
    const uint64_t per_chunk = DISK_CHUNK / DISK_RECORD;
    for (uint64_t first = 0; buf != NULL && first < disk.slots; first += per_chunk) {
        uint64_t n = disk.slots - first < per_chunk ? disk.slots - first : per_chunk;
        off_t off = (off_t)(DISK_START + first * DISK_RECORD);
        s.acked_before_read = atomic_load(&disk.acked);
        if (full_pread(disk.fd, buf, (size_t)(n * DISK_RECORD), off) != 0) {
            s.errors++;
            console_line("SEGUE-CHECK DISK ERROR reading slots from %" PRIu64 ": %s", first,
                         strerror(errno));
            break;
        }
        uint64_t acked_now = atomic_load(&disk.acked);
        for (uint64_t i = 0; i < n; i++)
            check_slot(&s, first + i, buf + i * DISK_WORDS, acked_now);
    }
    free(buf);
    atomic_fetch_add(&errors, s.errors);
    rep->records = s.records;
    rep->acked = s.acked_at_start;
    rep->errors = s.errors + atomic_load(&disk.failures);
}

/* ---- verification --------------------------------------------------------------------- */

/* Checks every hot page against its expected counter, LOCK_BATCH pages per lock hold. */
static uint64_t verify_hot(void)
{
    uint64_t bad = 0;
    for (size_t start = 0; start < hot.pages; start += LOCK_BATCH) {
        size_t end = start + LOCK_BATCH < hot.pages ? start + LOCK_BATCH : hot.pages;
        pthread_mutex_lock(&hot_lock);
        for (size_t i = start; i < end; i++)
            bad += !hot_ok(page_at(&hot, i), i, hot_expected[i]);
        pthread_mutex_unlock(&hot_lock);
    }
    return bad;
}

static void verify_all(struct verify_report *r)
{
    r->hot_errors = verify_hot();
    r->pattern_errors = 0;
    for (size_t i = 0; i < pattern.pages; i++)
        r->pattern_errors += !pattern_ok(page_at(&pattern, i), i);
    r->zero_errors = 0;
    for (size_t i = 0; i < zero.pages; i++)
        r->zero_errors += !zero_ok(page_at(&zero, i));
}

/*
 * Runs a full verification and formats the VERIFY line. Errors found are added to the
 * cumulative error count, and result=ok only when that count (which includes the writer's
 * findings since boot) is zero.
 */
static void verify_line(char *buf, size_t size)
{
    struct verify_report r;
    struct disk_report d;
    verify_all(&r);
    verify_disk(&d); /* adds what it finds to errors itself */
    uint64_t found = r.hot_errors + r.pattern_errors + r.zero_errors;
    uint64_t total = atomic_fetch_add(&errors, found) + found;
    snprintf(buf, size,
             "VERIFY boot=%016" PRIx64 " result=%s pass=%" PRIu64 " errors=%" PRIu64
             " hot_pages=%zu pattern_pages=%zu zero_pages=%zu hot_errors=%" PRIu64
             " pattern_errors=%" PRIu64 " zero_errors=%" PRIu64 " dirtied_mib=%" PRIu64
             " uptime_ms=%" PRIu64 " disk_records=%" PRIu64 " disk_acked=%" PRIu64
             " disk_errors=%" PRIu64 " disk_full=%d",
             boot_id, total == 0 ? "ok" : "fail", (uint64_t)atomic_load(&passes), total,
             hot.pages, pattern.pages, zero.pages, r.hot_errors, r.pattern_errors,
             r.zero_errors, (uint64_t)atomic_load(&dirtied_pages) / PAGES_PER_MIB, now_ms(),
             d.records, d.acked, d.errors, d.full);
}

/* ---- writer --------------------------------------------------------------------------- */

/* Rewrites n hot pages starting at *next, checking each first; counts a pass at each wrap. */
static void rewrite_pages(size_t *next, size_t n)
{
    while (n > 0) {
        size_t batch = n < LOCK_BATCH ? n : LOCK_BATCH;
        uint64_t bad = 0;
        pthread_mutex_lock(&hot_lock);
        for (size_t k = 0; k < batch; k++) {
            size_t i = *next;
            uint64_t *p = page_at(&hot, i);
            bad += !hot_ok(p, i, hot_expected[i]);
            hot_fill(p, i, ++hot_expected[i]);
            if (++*next == hot.pages) {
                *next = 0;
                atomic_fetch_add(&passes, 1);
            }
        }
        pthread_mutex_unlock(&hot_lock);
        if (bad)
            atomic_fetch_add(&errors, bad);
        atomic_fetch_add(&dirtied_pages, batch);
        n -= batch;
    }
}

/* Dirties hot pages at dirty_rate MiB/s; at rate 0 it verifies them about once a second. */
static void *writer_main(void *arg)
{
    (void)arg;
    size_t next = 0;
    double budget = 0;
    uint64_t last = now_ms(), last_verify = last;
    for (;;) {
        sleep_ms(TICK_MS);
        uint64_t t = now_ms();
        long rate = atomic_load(&dirty_rate);
        if (rate <= 0 || hot.pages == 0) {
            budget = 0;
            if (t - last_verify >= 1000) {
                uint64_t bad = verify_hot();
                atomic_fetch_add(&errors, bad);
                atomic_fetch_add(&passes, 1);
                last_verify = t;
            }
        } else {
            double per_ms = (double)rate * PAGES_PER_MIB / 1000.0;
            budget += per_ms * (double)(t - last);
            if (budget > per_ms * MAX_BURST_MS + 1)
                budget = per_ms * MAX_BURST_MS + 1;
            size_t n = (size_t)budget;
            budget -= (double)n;
            rewrite_pages(&next, n);
            last_verify = t;
        }
        last = t;
    }
    return NULL;
}

/* ---- UDP protocol --------------------------------------------------------------------- */

struct verify_request {
    struct sockaddr_storage peer;
    socklen_t peer_len;
};

static void send_text(const char *text, const struct sockaddr_storage *peer, socklen_t len)
{
    sendto(udp_fd, text, strlen(text), 0, (const struct sockaddr *)peer, len);
}

static void send_reply(const char *text, const struct sockaddr_storage *peer, socklen_t len)
{
    atomic_fetch_add(&replies, 1);
    send_text(text, peer, len);
}

/* The reply number is taken when the PONG is formatted, so it matches the reply it is in. */
static void send_pong(uint64_t seq, const struct sockaddr_storage *peer, socklen_t len)
{
    char out[LINE_MAX_LEN];
    uint64_t no = atomic_fetch_add(&replies, 1) + 1;
    snprintf(out, sizeof(out), "PONG %" PRIu64 " %016" PRIx64 " %" PRIu64 " %" PRIu64
             " %" PRIu64 " %" PRIu64, seq, boot_id, no, now_ms(),
             (uint64_t)atomic_load(&passes), (uint64_t)atomic_load(&errors));
    send_text(out, peer, len);
}

static void *verify_worker(void *arg)
{
    struct verify_request *req = arg;
    char line[LINE_MAX_LEN];
    verify_line(line, sizeof(line));
    send_reply(line, &req->peer, req->peer_len);
    free(req);
    atomic_fetch_sub(&verifiers, 1);
    return NULL;
}

/*
 * Starts a detached thread at normal priority rather than inheriting the caller's real-time
 * one: it is meant for long, CPU-bound work. Returns pthread_create's result.
 */
static int spawn_normal(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_t th;
    struct sched_param normal = {.sched_priority = 0};
    pthread_attr_init(&attr);
    pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
    pthread_attr_setschedpolicy(&attr, SCHED_OTHER);
    pthread_attr_setschedparam(&attr, &normal);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

/* VERIFY runs in its own thread so PINGs keep being answered while memory is checked. */
static void start_verify(const struct sockaddr_storage *peer, socklen_t len)
{
    struct verify_request *req = malloc(sizeof(*req));
    if (req == NULL || atomic_fetch_add(&verifiers, 1) >= MAX_VERIFIERS) {
        if (req != NULL)
            atomic_fetch_sub(&verifiers, 1);
        free(req);
        send_reply("ERR busy", peer, len);
        return;
    }
    req->peer = *peer;
    req->peer_len = len;
    int rc = spawn_normal(verify_worker, req);
    if (rc != 0) {
        atomic_fetch_sub(&verifiers, 1);
        free(req);
        send_reply("ERR busy", peer, len);
    }
}

/* Parses a decimal unsigned number that makes up the whole of s. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return 0;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    *out = v;
    return 1;
}

static void handle_request(char *req, const struct sockaddr_storage *peer, socklen_t len)
{
    char out[LINE_MAX_LEN];
    uint64_t n;
    req[strcspn(req, "\r\n")] = '\0';
    if (strncmp(req, "PING ", 5) == 0 && parse_u64(req + 5, &n)) {
        send_pong(n, peer, len);
        return;
    }
    if (strcmp(req, "VERIFY") == 0) {
        start_verify(peer, len);
        return;
    }
    if (strncmp(req, "RATE ", 5) == 0 && parse_u64(req + 5, &n) && n <= 1000000) {
        atomic_store(&dirty_rate, (long)n);
        snprintf(out, sizeof(out), "RATE %" PRIu64, n);
    } else {
        snprintf(out, sizeof(out), "ERR unknown request");
    }
    send_reply(out, peer, len);
}

static int udp_open(long port)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        console_line("SEGUE-CHECK FATAL cannot bind UDP port %ld: %s", port, strerror(errno));
        exit(2);
    }
    return fd;
}

static void *udp_main(void *arg)
{
    (void)arg;
    realtime_thread(UDP_PRIORITY);
    char buf[LINE_MAX_LEN];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        ssize_t n = recvfrom(udp_fd, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) {
            if (errno != EINTR)
                sleep_ms(10);
            continue;
        }
        buf[n] = '\0';
        handle_request(buf, &peer, len);
    }
    return NULL;
}

/* ---- console -------------------------------------------------------------------------- */

static void *heartbeat_main(void *arg)
{
    (void)arg;
    realtime_thread(HEARTBEAT_PRIORITY);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (uint64_t seq = 1;; seq++) {
        console_line("HB boot=%016" PRIx64 " seq=%" PRIu64 " pass=%" PRIu64 " errors=%" PRIu64
                     " uptime_ms=%" PRIu64, boot_id, seq, (uint64_t)atomic_load(&passes),
                     (uint64_t)atomic_load(&errors), now_ms());
        next.tv_nsec += cfg.heartbeat_ms * 1000000L;
        next.tv_sec += next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
    }
    return NULL;
}

/* No echo on the serial line: input would otherwise interleave with heartbeats. */
static void console_no_echo(void)
{
    struct termios t;
    if (tcgetattr(console_fd, &t) == 0) {
        t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        tcsetattr(console_fd, TCSANOW, &t);
    }
}

/* Reads console lines forever; "verify" prints a VERIFY line. Returns on EOF or error. */
static void console_reader(void)
{
    char buf[LINE_MAX_LEN];
    size_t used = 0;
    for (;;) {
        ssize_t n = read(console_fd, buf + used, sizeof(buf) - 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        used += (size_t)n;
        buf[used] = '\0';
        char *line = buf, *nl;
        while ((nl = strpbrk(line, "\r\n")) != NULL) {
            *nl = '\0';
            if (strcmp(line, "verify") == 0) {
                char out[LINE_MAX_LEN];
                verify_line(out, sizeof(out));
                console_line("%s", out);
            }
            line = nl + 1;
        }
        used = strlen(line);
        memmove(buf, line, used);
        if (used == sizeof(buf) - 1)
            used = 0; /* an overlong line is dropped */
    }
}

/* ---- main ----------------------------------------------------------------------------- */

static void parse_args(int argc, char **argv, const char **cmdline, const char **console)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cmdline") == 0 && i + 1 < argc) {
            *cmdline = argv[++i];
        } else if (strcmp(argv[i], "--console") == 0 && i + 1 < argc) {
            *console = argv[++i];
        } else {
            fprintf(stderr, "usage: %s [--cmdline FILE] [--console PATH]\n", argv[0]);
            exit(64);
        }
    }
}

static void start_thread(void *(*fn)(void *), const char *name)
{
    pthread_t th;
    if (pthread_create(&th, NULL, fn, NULL) != 0) {
        console_line("SEGUE-CHECK FATAL cannot start %s thread", name);
        exit(2);
    }
    pthread_detach(th);
}

int main(int argc, char **argv)
{
    const char *cmdline = "/proc/cmdline", *console = "/dev/console";
    parse_args(argc, argv, &cmdline, &console);
    console_fd = open(console, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (console_fd < 0) {
        fprintf(stderr, "segue-check: cannot open %s: %s\n", console, strerror(errno));
        return 2;
    }
    console_no_echo();
    load_config(cmdline);
    boot_id = make_boot_id();
    atomic_store(&dirty_rate, cfg.dirty_mbps);
    regions_init();
    journal_init();
    udp_fd = udp_open(cfg.port);
    start_thread(udp_main, "udp");
    start_thread(writer_main, "writer");
    if (disk.fd >= 0 && cfg.disk_rate > 0)
        start_thread(journal_main, "disk journal");
    console_line("SEGUE-CHECK READY boot=%016" PRIx64 " port=%ld hot_mib=%ld pattern_mib=%ld"
                 " zero_mib=%ld dirty_mbps=%ld disk=%s disk_rate=%ld disk_direct=%d"
                 " disk_slots=%" PRIu64, boot_id, cfg.port, cfg.hot_mib, cfg.pattern_mib,
                 cfg.zero_mib, cfg.dirty_mbps, cfg.disk, cfg.disk_rate, disk.direct,
                 disk.slots);
    start_thread(heartbeat_main, "heartbeat");
    console_reader();
    for (;;)
        pause();
}
