/*
 * segue-check: the guest-side workload and memory checker of Segue.
 *
 * Runs inside the test guest (started by the initramfs /init). It owns three memory regions:
 *   hot     pages rewritten continuously at a configurable rate; each page holds its index and
 *           a counter, and every rewrite first checks that the page still holds exactly what the
 *           previous write left (a lost or stale page after a migration shows up as an error);
 *   pattern pages filled once at start with data derived from the page index and the boot id;
 *   zero    pages that must stay all zero.
 * It answers a small ASCII UDP protocol (PING, VERIFY, RATE), writes a heartbeat line to the
 * console every heartbeat period, and runs a verification when the console sends "verify".
 *
 * Configuration comes from the kernel command line (segue.port, segue.hot_mib,
 * segue.dirty_mbps, segue.pattern_mib, segue.zero_mib, segue.heartbeat_ms). For testing on a
 * host, "--cmdline FILE" reads the keys from FILE and "--console PATH" replaces /dev/console.
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

struct config {
    long port, hot_mib, dirty_mbps, pattern_mib, zero_mib, heartbeat_ms;
};

struct region {
    uint64_t *mem;
    size_t pages;
};

struct verify_report {
    uint64_t hot_errors, pattern_errors, zero_errors;
};

static struct config cfg = {7777, 16, 0, 16, 8, 50};
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
 * Reads segue.<key>=<n> from the command line text; the last occurrence wins, as in the
 * kernel's own parsing. Returns def when absent, or when the value is malformed or above max.
 */
static long cmdline_long(const char *text, const char *key, long def, long max)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "segue.%s=", key);
    size_t len = strlen(needle);
    const char *found = NULL;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += len)
        if (p == text || p[-1] == ' ' || p[-1] == '\t')
            found = p + len;
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
    verify_all(&r);
    uint64_t found = r.hot_errors + r.pattern_errors + r.zero_errors;
    uint64_t total = atomic_fetch_add(&errors, found) + found;
    snprintf(buf, size,
             "VERIFY boot=%016" PRIx64 " result=%s pass=%" PRIu64 " errors=%" PRIu64
             " hot_pages=%zu pattern_pages=%zu zero_pages=%zu hot_errors=%" PRIu64
             " pattern_errors=%" PRIu64 " zero_errors=%" PRIu64 " dirtied_mib=%" PRIu64
             " uptime_ms=%" PRIu64,
             boot_id, total == 0 ? "ok" : "fail", (uint64_t)atomic_load(&passes), total,
             hot.pages, pattern.pages, zero.pages, r.hot_errors, r.pattern_errors,
             r.zero_errors, (uint64_t)atomic_load(&dirtied_pages) / PAGES_PER_MIB, now_ms());
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
    udp_fd = udp_open(cfg.port);
    start_thread(udp_main, "udp");
    start_thread(writer_main, "writer");
    console_line("SEGUE-CHECK READY boot=%016" PRIx64 " port=%ld hot_mib=%ld pattern_mib=%ld"
                 " zero_mib=%ld dirty_mbps=%ld", boot_id, cfg.port, cfg.hot_mib,
                 cfg.pattern_mib, cfg.zero_mib, cfg.dirty_mbps);
    start_thread(heartbeat_main, "heartbeat");
    console_reader();
    for (;;)
        pause();
}
