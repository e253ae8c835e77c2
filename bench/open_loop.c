/* open_loop: an open-loop HTTP/1.1 load generator (wrk2's idea, no dependencies; C11, Linux).
 *
 *   gcc -O2 -Wall -Wextra -o open_loop bench/open_loop.c
 *   open_loop [-t TIMEOUT_S] [-w WAKE_EARLY_US] [-n] PORT RATE SECONDS CONNECTIONS REQUESTS_FILE
 *             DRAIN_S MUST_CONTAIN
 *
 * PORT         server on 127.0.0.1
 * RATE         requests/s; request i is due at start + i / RATE (CLOCK_MONOTONIC)
 * SECONDS      length of the schedule: int(RATE * SECONDS) requests
 * CONNECTIONS  keep-alive connections, one outstanding request each
 * REQUESTS_FILE  records `<u32 little-endian length><u8 known><length bytes>`, each a whole raw
 *              HTTP/1.1 request (headers and body); request i sends record i % count. `known`
 *              (0/1) says whether the request is a known user's (counted in fallback_known).
 * DRAIN_S      after the schedule, wait at most this long for the answers still out
 * MUST_CONTAIN a good 2xx answer's body contains these bytes
 * -t TIMEOUT_S a request unanswered this long after it was due is a timeout (default 10)
 * -w WAKE_EARLY_US  wake this long before each due time and poll until it (default 50; 0: the
 *              timer alone: ~30 us late on an idle machine, up to ms on a busy one)
 * -n           stay a normal task (by default it asks for SCHED_FIFO priority 1, if allowed)
 *
 * All connections are opened first and each sends one unmeasured warm-up request (record c for
 * connection c) before the schedule starts: a connect is not a request's latency. Then a timerfd
 * (absolute, CLOCK_MONOTONIC, re-armed for each due time) wakes an epoll loop WAKE_EARLY_US before
 * each due time, the loop polls (reading answers meanwhile) until the due time, and the request
 * goes out on an idle connection (round robin, which keeps every connection warm) or, when none
 * is idle, waits in a FIFO for the next one that frees up. Latency is measured from the due time
 * to the moment the whole answer was read, whenever the request was actually written (no
 * coordinated omission).
 *
 * Answers (Content-Length, chunked, or until close) are classified like bench/serving.py's tally:
 * non-2xx -> non_2xx; 2xx without MUST_CONTAIN -> bad_bodies; else ok (latency recorded) and a
 * fallback when the body matches `"fallback"\s*:` and nowhere `"fallback"\s*:\s*null`.
 * Connect/read/write/parse errors count the request as a socket error and close that connection
 * (it reconnects for its next request); requests still unanswered when the drain ends are
 * unfinished. A request that waited in the FIFO past its timeout is dropped as a timeout.
 *
 * Output: one JSON line on stdout: requests, ok, non_2xx, bad_bodies, socket_errors, timeouts,
 * unfinished, fallback, fallback_known, seconds (start to last answer, at least SECONDS),
 * p50/p99/p999/max_ms (exact, numpy's linear interpolation over every ok latency), and the
 * generator's own health: send_lateness_p50/p99/max_ms (the write of each request that found an
 * idle connection, against its due time), queued (requests that waited for a connection),
 * warmup_errors, realtime (whether it got SCHED_FIFO), wake_early_us. Exit status 2 on bad
 * arguments or input, 1 on a system failure.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define WARMUP (-1)
#define NO_REQUEST (-2)
#define TIMER_ID UINT32_MAX
#define MAX_HEAD (64 * 1024)
#define MAX_ANSWER (64 * 1024 * 1024)

typedef struct {
    const char *data;
    uint32_t len;
    bool known;
} record_t;

enum conn_state { CLOSED, CONNECTING, WRITING, READING };

typedef struct {
    int fd;
    enum conn_state state;
    int64_t req;       /* request index, WARMUP or NO_REQUEST */
    int64_t due;       /* ns */
    bool waited;       /* the request waited in the FIFO for a connection */
    bool lateness_done;
    size_t written;
    char *buf;         /* what was read of the answer */
    size_t len, cap;
    char *body;        /* a chunked answer's decoded body */
    size_t body_cap;
    uint32_t events;   /* epoll interest now registered */
} conn_t;

typedef struct { /* one parsed answer */
    int status;
    const char *body;
    size_t body_len;
    size_t consumed;
    bool close;
} answer_t;

static struct {
    int port;
    double rate;
    double seconds;
    int nconn;
    double drain_s;
    int64_t timeout_ns, early_ns;
    bool realtime;
    const char *must;
    size_t must_len;
    record_t *records;
    size_t nrecords;
    int ep, tfd;
    conn_t *conns;
    int *idle; /* FIFO ring of idle connection ids */
    size_t idle_head, idle_count;
    int64_t *fifo; /* FIFO ring of request indexes waiting for a connection */
    size_t fifo_head, fifo_count, fifo_cap;
    int64_t total, next, armed, resolved, start, last_done;
    int64_t *latencies, *lateness;
    size_t nlat, nlate;
    long ok, non_2xx, bad_bodies, socket_errors, timeouts, fallback, fallback_known, queued;
    long warmups_out, warmup_errors;
} g;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t due_of(int64_t i) { return g.start + (int64_t)((double)i * 1e9 / g.rate); }

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void usage(const char *msg) {
    fprintf(stderr, "open_loop: %s\nusage: open_loop [-t TIMEOUT_S] [-w WAKE_EARLY_US] [-n] PORT RATE "
                    "SECONDS CONNECTIONS REQUESTS_FILE DRAIN_S MUST_CONTAIN\n", msg);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("realloc");
    return q;
}

/* --- input -------------------------------------------------------------------------------- */

static void load_records(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    if (fseek(f, 0, SEEK_END) != 0) die(path);
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) die(path);
    char *data = xrealloc(NULL, (size_t)size);
    if (size > 0 && fread(data, 1, (size_t)size, f) != (size_t)size) die(path);
    fclose(f);
    size_t cap = 0, off = 0;
    while (off < (size_t)size) {
        if ((size_t)size - off < 5) usage("truncated record header in REQUESTS_FILE");
        const unsigned char *h = (const unsigned char *)data + off;
        uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
        if (len == 0 || len > (size_t)size - off - 5) usage("bad record length in REQUESTS_FILE");
        if (g.nrecords == cap) {
            cap = cap ? 2 * cap : 1024;
            g.records = xrealloc(g.records, cap * sizeof *g.records);
        }
        g.records[g.nrecords++] = (record_t){data + off + 5, len, h[4] != 0};
        off += 5 + (size_t)len;
    }
    if (g.nrecords == 0) usage("REQUESTS_FILE has no records");
}

/* --- answers ------------------------------------------------------------------------------ */

static bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Python's is_fallback: `"fallback"\s*:` somewhere and `"fallback"\s*:\s*null` nowhere. */
static bool is_fallback(const char *body, size_t len) {
    static const char key[] = "\"fallback\"";
    const size_t klen = sizeof key - 1;
    bool named = false;
    const char *p = body, *end = body + len;
    while ((p = memmem(p, (size_t)(end - p), key, klen)) != NULL) {
        const char *q = p + klen;
        p += 1;
        while (q < end && is_space(*q)) q++;
        if (q >= end || *q != ':') continue;
        named = true;
        q++;
        while (q < end && is_space(*q)) q++;
        if (end - q >= 4 && memcmp(q, "null", 4) == 0) return false;
    }
    return named;
}

static bool header_is(const char *line, size_t len, const char *name, const char **value, size_t *vlen) {
    size_t n = strlen(name);
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0) return false;
    const char *v = line + n + 1, *e = line + len;
    while (v < e && is_space(*v)) v++;
    while (e > v && is_space(e[-1])) e--;
    *value = v;
    *vlen = (size_t)(e - v);
    return true;
}

static bool contains_ci(const char *s, size_t len, const char *word) {
    size_t n = strlen(word);
    for (size_t i = 0; i + n <= len; i++)
        if (strncasecmp(s + i, word, n) == 0) return true;
    return false;
}

/* 1: a whole answer in c->buf (filled in *a); 0: not yet; -1: malformed. At EOF (`eof`), an
 * answer without Content-Length or chunking ends there. */
static int parse_answer(conn_t *c, bool eof, answer_t *a) {
    size_t skip = 0;
    for (;;) {
        const char *buf = c->buf + skip;
        size_t len = c->len - skip;
        const char *end = memmem(buf, len, "\r\n\r\n", 4);
        if (!end) return len > MAX_HEAD ? -1 : 0;
        size_t head = (size_t)(end - buf) + 4;
        if (head < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ') return -1;
        int status = 0;
        for (int k = 9; k < 12; k++) {
            if (buf[k] < '0' || buf[k] > '9') return -1;
            status = status * 10 + (buf[k] - '0');
        }
        if (status >= 100 && status < 200) { /* an interim answer: the real one follows */
            skip += head;
            continue;
        }
        long long length = -1;
        bool chunked = false;
        a->close = buf[7] == '0'; /* HTTP/1.0 closes unless told otherwise */
        const char *line = (const char *)memchr(buf, '\n', head) + 1;
        while (line < buf + head - 2) {
            const char *nl = memchr(line, '\n', (size_t)(buf + head - line));
            size_t llen = (size_t)(nl - line);
            if (llen > 0 && line[llen - 1] == '\r') llen--;
            const char *v;
            size_t vlen;
            if (header_is(line, llen, "content-length", &v, &vlen)) {
                char tmp[32];
                if (vlen == 0 || vlen >= sizeof tmp) return -1;
                memcpy(tmp, v, vlen);
                tmp[vlen] = 0;
                char *stop;
                length = strtoll(tmp, &stop, 10);
                if (*stop || length < 0 || length > MAX_ANSWER) return -1;
            } else if (header_is(line, llen, "transfer-encoding", &v, &vlen)) {
                chunked = contains_ci(v, vlen, "chunked");
            } else if (header_is(line, llen, "connection", &v, &vlen)) {
                if (contains_ci(v, vlen, "close")) a->close = true;
                else if (contains_ci(v, vlen, "keep-alive")) a->close = false;
            }
            line = nl + 1;
        }
        a->status = status;
        const char *body = buf + head;
        size_t avail = len - head;
        if (status == 204 || status == 304) {
            a->body = body;
            a->body_len = 0;
            a->consumed = skip + head;
        } else if (chunked) {
            size_t pos = 0, out = 0;
            for (;;) {
                const char *crlf = memmem(body + pos, avail - pos, "\r\n", 2);
                if (!crlf) return avail - pos > 1024 ? -1 : 0;
                char *stop;
                errno = 0;
                unsigned long long size = strtoull(body + pos, &stop, 16);
                if (stop == body + pos || errno || size > MAX_ANSWER || (*stop != ';' && *stop != '\r'))
                    return -1;
                pos = (size_t)(crlf - body) + 2;
                if (size == 0) { /* trailers, if any, end with an empty line */
                    if (avail - pos >= 2 && memcmp(body + pos, "\r\n", 2) == 0) {
                        pos += 2;
                    } else {
                        const char *t = memmem(body + pos, avail - pos, "\r\n\r\n", 4);
                        if (!t) return 0;
                        pos = (size_t)(t - body) + 4;
                    }
                    break;
                }
                if (avail - pos < size + 2) return 0;
                if (memcmp(body + pos + size, "\r\n", 2) != 0) return -1;
                if (out + size > c->body_cap) {
                    c->body_cap = 2 * (out + size);
                    c->body = xrealloc(c->body, c->body_cap);
                }
                memcpy(c->body + out, body + pos, size);
                out += size;
                pos += size + 2;
            }
            a->body = c->body;
            a->body_len = out;
            a->consumed = skip + head + pos;
        } else if (length >= 0) {
            if (avail < (size_t)length) return 0;
            a->body = body;
            a->body_len = (size_t)length;
            a->consumed = skip + head + (size_t)length;
        } else { /* the body runs to the end of the connection */
            if (!eof) return avail > MAX_ANSWER ? -1 : 0;
            a->body = body;
            a->body_len = avail;
            a->consumed = c->len;
            a->close = true;
        }
        return 1;
    }
}

/* --- connections -------------------------------------------------------------------------- */

static void set_events(conn_t *c, int id, uint32_t events) {
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)id};
    if (epoll_ctl(g.ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
    c->events = events;
}

static void close_conn(conn_t *c) {
    if (c->fd >= 0) close(c->fd); /* closing also drops it from the epoll set */
    c->fd = -1;
    c->events = 0;
    c->state = CLOSED;
    c->len = 0;
}

static void make_idle(int id) {
    conn_t *c = &g.conns[id];
    c->req = NO_REQUEST;
    g.idle[(g.idle_head + g.idle_count++) % (size_t)g.nconn] = id;
    if (c->fd >= 0) set_events(c, id, EPOLLIN); /* notices the server closing an idle connection */
}

/* The request on c failed: count it, close the connection, free it for the next request. */
static void fail(int id, bool timeout) {
    conn_t *c = &g.conns[id];
    if (c->req == WARMUP) {
        g.warmup_errors++;
        g.warmups_out--;
    } else {
        if (timeout) g.timeouts++;
        else g.socket_errors++;
        g.resolved++;
    }
    close_conn(c);
    make_idle(id);
}

static void finish(int id, const answer_t *a, int64_t t) {
    conn_t *c = &g.conns[id];
    if (c->req == WARMUP) {
        g.warmups_out--;
    } else {
        g.last_done = t;
        g.resolved++;
        if (a->status < 200 || a->status >= 300) {
            g.non_2xx++;
        } else if (g.must_len && !memmem(a->body, a->body_len, g.must, g.must_len)) {
            g.bad_bodies++;
        } else {
            g.ok++;
            g.latencies[g.nlat++] = t - c->due;
            if (is_fallback(a->body, a->body_len)) {
                g.fallback++;
                if (g.records[c->req % (int64_t)g.nrecords].known) g.fallback_known++;
            }
        }
    }
    /* one request at a time: anything after the answer is not ours to read */
    if (a->close || a->consumed != c->len) close_conn(c);
    c->len = 0;
    make_idle(id);
}

/* Write what is left of c's request; false when the connection failed (already counted). */
static bool write_some(int id) {
    conn_t *c = &g.conns[id];
    const record_t *r = &g.records[(c->req == WARMUP ? id : c->req) % (int64_t)g.nrecords];
    if (!c->lateness_done && c->req != WARMUP) {
        if (!c->waited) g.lateness[g.nlate++] = now_ns() - c->due;
        c->lateness_done = true;
    }
    while (c->written < r->len) {
        ssize_t n = send(c->fd, r->data + c->written, r->len - c->written, MSG_NOSIGNAL);
        if (n > 0) {
            c->written += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->state = WRITING;
            set_events(c, id, EPOLLIN | EPOLLOUT);
            return true;
        } else {
            fail(id, false);
            return false;
        }
    }
    c->state = READING;
    set_events(c, id, EPOLLIN);
    return true;
}

/* Put request `req` (or WARMUP) on idle connection id, connecting first if it is closed. */
static void start_request(int id, int64_t req, bool waited) {
    conn_t *c = &g.conns[id];
    c->req = req;
    c->due = req == WARMUP ? 0 : due_of(req);
    c->waited = waited;
    c->lateness_done = false;
    c->written = 0;
    c->len = 0;
    if (c->fd < 0) {
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) die("socket");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
            if (errno != EINPROGRESS) {
                fail(id, false);
                return;
            }
            c->state = CONNECTING;
            set_events(c, id, EPOLLOUT);
            return;
        }
    }
    write_some(id);
}

/* Requests waiting for a connection go out on idle ones, oldest first. */
static void pump(int64_t t) {
    while (g.fifo_count && g.idle_count) {
        int64_t req = g.fifo[g.fifo_head];
        g.fifo_head = (g.fifo_head + 1) % g.fifo_cap;
        g.fifo_count--;
        if (t - due_of(req) >= g.timeout_ns) { /* waited past its timeout: not worth sending */
            g.timeouts++;
            g.resolved++;
            continue;
        }
        int id = g.idle[g.idle_head];
        g.idle_head = (g.idle_head + 1) % (size_t)g.nconn;
        g.idle_count--;
        start_request(id, req, true);
    }
}

/* Every request due by t goes out on an idle connection or waits in the FIFO. */
static void dispatch(int64_t t) {
    while (g.next < g.total && due_of(g.next) <= t) {
        int64_t req = g.next++;
        if (g.fifo_count == 0 && g.idle_count) {
            int id = g.idle[g.idle_head];
            g.idle_head = (g.idle_head + 1) % (size_t)g.nconn;
            g.idle_count--;
            start_request(id, req, false);
        } else {
            g.queued++;
            g.fifo[(g.fifo_head + g.fifo_count++) % g.fifo_cap] = req;
        }
    }
    pump(t);
    if (g.next < g.total && g.next != g.armed) { /* re-armed only when the next due time changed */
        g.armed = g.next;
        int64_t due = due_of(g.next) - g.early_ns; /* then run_loop polls until it is due */
        struct itimerspec its = {.it_value = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000}};
        if (timerfd_settime(g.tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0) die("timerfd_settime");
    }
}

static void on_event(int id, uint32_t events) {
    conn_t *c = &g.conns[id];
    if (c->fd < 0) return; /* closed earlier in this batch */
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0 || (events & EPOLLERR)) {
            fail(id, false);
            return;
        }
        write_some(id);
        return;
    }
    if (c->state == WRITING && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        if (!write_some(id)) return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    if (c->req == NO_REQUEST) { /* an idle connection: the server closed it, or sent junk */
        char junk[256];
        ssize_t n = recv(c->fd, junk, sizeof junk, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        close_conn(c); /* it reconnects for its next request */
        return;
    }
    for (;;) {
        if (c->cap - c->len < 16384) {
            c->cap = c->cap ? 2 * c->cap : 65536;
            c->buf = xrealloc(c->buf, c->cap);
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        int64_t t = now_ns();
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            fail(id, false);
            return;
        }
        c->len += (size_t)n;
        answer_t a;
        int r = parse_answer(c, n == 0, &a);
        if (r == 1) {
            finish(id, &a, t);
            return;
        }
        if (r < 0 || n == 0 || c->len > MAX_ANSWER) {
            fail(id, false);
            return;
        }
    }
}

/* Requests out longer than the timeout (from their due time; warm-ups from the phase's start). */
static void expire(int64_t t, int64_t warmup_deadline) {
    for (int id = 0; id < g.nconn; id++) {
        conn_t *c = &g.conns[id];
        bool late = c->req == WARMUP ? t >= warmup_deadline : c->req >= 0 && t - c->due >= g.timeout_ns;
        if (late) fail(id, true);
    }
}

static void run_loop(int64_t deadline, bool warmup) {
    struct epoll_event evs[64];
    for (;;) {
        int64_t t = now_ns();
        if (!warmup) dispatch(t);
        expire(t, deadline);
        if (!warmup) pump(t);
        if (warmup ? g.warmups_out == 0 : g.resolved == g.total) return;
        if (t >= deadline) return;
        /* The timerfd wakes us early_ns before a due time; from then on the loop polls (reading
         * answers as they come) until the request is due: a wake-up takes ~30 us, more on a busy
         * machine, so no timer alone sends on time. Otherwise the epoll timeout only paces the
         * timeout checks. */
        int64_t wait_ms = (deadline - t) / 1000000 + 1;
        bool poll = !warmup && g.next < g.total && due_of(g.next) - t <= g.early_ns;
        int n = epoll_wait(g.ep, evs, 64, poll ? 0 : wait_ms < 50 ? (int)wait_ms : 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        /* Idle connections the server closed first (so the due request does not go out on one),
         * then the due request, then the answers. */
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u32 != TIMER_ID && g.conns[evs[k].data.u32].req == NO_REQUEST) {
                on_event((int)evs[k].data.u32, evs[k].events);
                evs[k].events = 0;
            }
        }
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u32 == TIMER_ID) {
                uint64_t ticks;
                if (read(g.tfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN) die("read timerfd");
                if (!warmup) dispatch(now_ns());
                evs[k].events = 0;
            }
        }
        for (int k = 0; k < n; k++)
            if (evs[k].data.u32 != TIMER_ID && evs[k].events) on_event((int)evs[k].data.u32, evs[k].events);
    }
}

/* --- report ------------------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile's default (linear interpolation) over sorted values, in ms. */
static void print_pct(const char *name, const int64_t *v, size_t n, double p, bool comma) {
    if (n == 0) {
        printf("\"%s\":null%s", name, comma ? "," : "");
        return;
    }
    double rank = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)rank;
    size_t hi = lo + 1 < n ? lo + 1 : lo;
    double value = (double)v[lo] + (rank - (double)lo) * (double)(v[hi] - v[lo]);
    printf("\"%s\":%.4f%s", name, value / 1e6, comma ? "," : "");
}

int main(int argc, char **argv) {
    char *stop;
    /* Polling 50 us before each due time: p99 send lateness ~30 us on the bench machine, for ~1%
     * of a core more than the timer alone (p50 30 us, p99 70-470 us late); 100 us: p99 3-15 us,
     * ~3% of a core more. */
    double timeout_s = 10.0, early_us = 50.0;
    bool try_realtime = true;
    for (int opt; (opt = getopt(argc, argv, "t:w:n")) != -1;) {
        if (opt == 't') {
            timeout_s = strtod(optarg, &stop);
            if (*stop || !(timeout_s > 0)) usage("bad -t TIMEOUT_S");
        } else if (opt == 'w') {
            early_us = strtod(optarg, &stop);
            if (*stop || !(early_us >= 0 && early_us <= 1e6)) usage("bad -w WAKE_EARLY_US");
        } else if (opt == 'n') {
            try_realtime = false;
        } else {
            usage("unknown option");
        }
    }
    argv += optind;
    if (argc - optind != 7) usage("wrong number of arguments");
    long port = strtol(argv[0], &stop, 10);
    if (*stop || port <= 0 || port > 65535) usage("bad PORT");
    g.port = (int)port;
    g.rate = strtod(argv[1], &stop);
    if (*stop || !(g.rate > 0)) usage("bad RATE");
    g.seconds = strtod(argv[2], &stop);
    if (*stop || !(g.seconds > 0)) usage("bad SECONDS");
    long nconn = strtol(argv[3], &stop, 10);
    if (*stop || nconn <= 0 || nconn > 65536) usage("bad CONNECTIONS");
    g.nconn = (int)nconn;
    g.drain_s = strtod(argv[5], &stop);
    if (*stop || !(g.drain_s >= 0)) usage("bad DRAIN_S");
    g.must = argv[6];
    g.must_len = strlen(argv[6]);
    g.timeout_ns = (int64_t)(timeout_s * 1e9);
    g.early_ns = (int64_t)(early_us * 1e3);
    double total = g.rate * g.seconds;
    if (total < 1 || total > 1e9) usage("RATE * SECONDS must be between 1 and 1e9 requests");
    g.total = (int64_t)total;
    load_records(argv[4]);

    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* the default 50 us slack would delay every wake-up */
    /* The lowest real-time priority when allowed (root, CAP_SYS_NICE): on a busy machine a normal
     * task's wake-up waits ms for a core, and that would be counted as the server's latency. It
     * runs for a few us per request (plus the polling before each due time), so the others keep
     * their cores. */
    struct sched_param sp = {.sched_priority = 1};
    g.realtime = try_realtime && sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) == 0;
    g.latencies = xrealloc(NULL, (size_t)g.total * sizeof(int64_t));
    g.lateness = xrealloc(NULL, (size_t)g.total * sizeof(int64_t));
    g.fifo_cap = (size_t)g.total;
    g.fifo = xrealloc(NULL, g.fifo_cap * sizeof(int64_t));
    g.conns = xrealloc(NULL, (size_t)g.nconn * sizeof(conn_t));
    g.idle = xrealloc(NULL, (size_t)g.nconn * sizeof(int));
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0) die("epoll_create1");
    g.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g.tfd < 0) die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = TIMER_ID};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, g.tfd, &tev) != 0) die("epoll_ctl timerfd");

    /* Warm-up: every connection opens and answers one unmeasured request before the schedule. */
    for (int id = 0; id < g.nconn; id++) {
        g.conns[id] = (conn_t){.fd = -1, .state = CLOSED, .req = NO_REQUEST};
        g.warmups_out++;
        start_request(id, WARMUP, false);
    }
    run_loop(now_ns() + g.timeout_ns, true);
    expire(INT64_MAX, INT64_MIN); /* warm-ups still out after the timeout: failed */
    g.idle_head = 0;
    g.idle_count = 0;
    for (int id = 0; id < g.nconn; id++) {
        g.idle[g.idle_count++] = id;
        if (g.conns[id].fd >= 0) set_events(&g.conns[id], id, EPOLLIN);
    }

    g.start = now_ns() + 100000000; /* 0.1 s, as bench/serving.py's asyncio open loop */
    g.last_done = g.start;
    g.armed = -1;
    dispatch(g.start - 1); /* arms the timer for request 0 */
    run_loop(g.start + (int64_t)((g.seconds + g.drain_s) * 1e9), false);

    long answered = g.ok + g.non_2xx + g.bad_bodies + g.socket_errors + g.timeouts;
    double seconds = (double)(g.last_done - g.start) / 1e9;
    if (seconds < g.seconds) seconds = g.seconds;
    qsort(g.latencies, g.nlat, sizeof(int64_t), cmp_i64);
    qsort(g.lateness, g.nlate, sizeof(int64_t), cmp_i64);
    printf("{\"requests\":%lld,\"ok\":%ld,\"non_2xx\":%ld,\"bad_bodies\":%ld,\"socket_errors\":%ld,"
           "\"timeouts\":%ld,\"unfinished\":%lld,\"fallback\":%ld,\"fallback_known\":%ld,\"seconds\":%.4f,",
           (long long)g.total, g.ok, g.non_2xx, g.bad_bodies, g.socket_errors, g.timeouts,
           (long long)(g.total - answered), g.fallback, g.fallback_known, seconds);
    print_pct("p50_ms", g.latencies, g.nlat, 50, true);
    print_pct("p99_ms", g.latencies, g.nlat, 99, true);
    print_pct("p999_ms", g.latencies, g.nlat, 99.9, true);
    print_pct("max_ms", g.latencies, g.nlat, 100, true);
    print_pct("send_lateness_p50_ms", g.lateness, g.nlate, 50, true);
    print_pct("send_lateness_p99_ms", g.lateness, g.nlate, 99, true);
    print_pct("send_lateness_max_ms", g.lateness, g.nlate, 100, true);
    printf("\"queued\":%ld,\"warmup_errors\":%ld,\"realtime\":%s,\"wake_early_us\":%g}\n", g.queued,
           g.warmup_errors, g.realtime ? "true" : "false", (double)g.early_ns / 1e3);
    return 0;
}
