/*
 * loadgen: a cheap Pusher-protocol WebSocket subscriber load generator (plain C, epoll, libc).
 *
 * Opens --conns WebSockets to ws://HOST:PORT/PATH from the --src source addresses
 * (round-robin), at most --inflight handshakes at a time, waits for
 * pusher:connection_established, sends pusher:subscribe for --channel, counts
 * pusher_internal:subscription_succeeded. Then it counts text frames without parsing them
 * (a frame starting with {"event":"<--event>" is an event), and for 1 event in --sample it
 * reads the publisher's timestamp (the `t` member of the event's data: the SCHEDULED send
 * time, CLOCK_MONOTONIC ns) and adds now - t to a latency histogram. pusher:ping gets
 * pusher:pong, a WebSocket ping gets a pong; every client frame is masked.
 *
 * With --reconnect 1, a socket the server closes with 4200-4299 (or after a pusher:error
 * with such a code) connects again at once and subscribes again; a failed connect or any
 * other loss is retried after --retry-ms (doubling up to --retry-max-ms). With
 * --handshake-timeout-ms, a connect + handshake + subscribe not done in time is abandoned and
 * retried the same way (browsers and SDKs time out a connection attempt too).
 *
 * Control: commands on stdin, one a line; answers on stdout, one JSON object a line.
 *   start   begin a measurement window (frame counters, latency histogram, CPU baseline)
 *   report  print the counters of the current window and the connection states
 *   quit    close every socket and exit (stdin EOF too)
 * Without commands it prints {"type":"subscribed",...} once every socket has subscribed.
 *
 * Build: gcc -O2 -o loadgen loadgen.c   (bench/loadgen/build.py does it into build/)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_WAIT_EST, ST_WAIT_SUB, ST_SUBSCRIBED, ST_RETRY };

struct conn {
    int fd;
    uint8_t state;
    uint8_t want_out;   /* EPOLLOUT registered */
    uint8_t got_4200;   /* a pusher:error 42xx arrived: reconnect at once on close */
    uint8_t resub;      /* lost after being subscribed: counts when subscribed again */
    uint8_t ever_sub;
    uint16_t backoff_ms;
    int64_t deadline; /* --handshake-timeout-ms: give up on this handshake after it */
    char *in;
    uint32_t in_len, in_cap;
    char *out;
    uint32_t out_len, out_cap;
};

/* ----------------------------------------------------------------------------- options */
static const char *o_host = "127.0.0.1";
static int o_port = 6001;
static const char *o_path = "/app/app-key?protocol=7&client=loadgen&version=1.0";
static int o_conns = 100;
static int o_inflight = 64;
static int o_sample = 1;
static int o_reconnect = 0;
static int o_retry_ms = 25;
static int o_retry_max_ms = 200;
static int o_hs_timeout_ms = 0;
static const char *o_channel = "bench";
static const char *o_event = "bench";
static const char *o_id = "0";

static struct in_addr *srcs;
static int nsrc;

/* ------------------------------------------------------------------------------- state */
static struct conn *conns;
static int ep;
static char rbuf[1 << 18];
static char sub_msg[512];
static int sub_len;
static char ev_prefix[256];
static int ev_prefix_len;
static struct sockaddr_in dst;
static char http_req[1024];
static int http_req_len;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static int next_open;    /* next never-opened connection */
static int pending;      /* sockets between connect() and subscription_succeeded */
static int subscribed;   /* sockets subscribed now */
static int all_sub_printed;
static int64_t t_first_connect, t_last_sub, t_all_sub;

/* counters (totals and window) */
static uint64_t connect_errors, handshake_errors, disconnects, sub_errors, pings, retries;
static uint64_t handshake_timeouts;
static uint64_t closed_42xx, other_closes, reconnects, resubscribed;
static int64_t t_first_close, t_last_resub;
static uint64_t close_codes[5000]; /* sockets lost, by close code (0: no close frame) */
static uint64_t error_codes[5000]; /* pusher:error frames, by code */
static uint64_t w_frames, w_events, w_other, w_bytes;
static int64_t w_start;
static double w_cpu0_user, w_cpu0_sys;
static uint64_t sample_ctr;

/* latency histogram, microseconds: exact below 1024, then 512 sub-buckets per power of 2 */
#define HIST_N (1024 + 40 * 512)
static uint64_t hist[HIST_N];
static uint64_t hist_n, hist_max;

/* retry FIFO (constant delay per attempt level keeps it nearly ordered; checked each tick) */
static int *rq;
static int64_t *rq_at;
static int rq_head, rq_tail, rq_cap;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static uint32_t rnd32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static void cpu_now(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int hist_idx(uint64_t us) {
    if (us < 1024) return (int)us;
    int msb = 63 - __builtin_clzll(us);
    int shift = msb - 9;
    int i = 1024 + (msb - 10) * 512 + (int)((us >> shift) - 512);
    return i < HIST_N ? i : HIST_N - 1;
}

static uint64_t hist_val(int i) { /* lower bound of bucket i, in microseconds */
    if (i < 1024) return (uint64_t)i;
    int msb = (i - 1024) / 512 + 10;
    uint64_t sub = (uint64_t)((i - 1024) % 512) + 512;
    return sub << (msb - 9);
}

static double hist_pct(double p) {
    if (!hist_n) return -1;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)(hist_n - 1)) + 1, acc = 0;
    for (int i = 0; i < HIST_N; i++) {
        acc += hist[i];
        if (acc >= rank) return hist_val(i) / 1000.0;
    }
    return hist_max / 1000.0;
}

/* -------------------------------------------------------------------------------- output */

static void set_events(struct conn *c, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void buf_append(char **b, uint32_t *len, uint32_t *cap, const char *d, uint32_t n) {
    if (*len + n > *cap) {
        uint32_t nc = *cap ? *cap : 256;
        while (nc < *len + n) nc *= 2;
        *b = realloc(*b, nc);
        if (!*b) { perror("realloc"); exit(2); }
        *cap = nc;
    }
    memcpy(*b + *len, d, n);
    *len += n;
}

static void raw_send(struct conn *c, const char *d, uint32_t n) {
    if (c->out_len == 0) {
        ssize_t w = send(c->fd, d, n, MSG_NOSIGNAL);
        if (w == (ssize_t)n) return;
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) return; /* the read side sees it */
            w = 0;
        }
        d += w;
        n -= (uint32_t)w;
    }
    buf_append(&c->out, &c->out_len, &c->out_cap, d, n);
    if (!c->want_out) {
        c->want_out = 1;
        set_events(c, EPOLLIN | EPOLLOUT);
    }
}

/* one masked client frame (FIN set) */
static void ws_send(struct conn *c, int opcode, const char *payload, uint32_t n) {
    char f[14 + 65536];
    if (n > 65536) n = 65536;
    uint32_t h = 0;
    f[h++] = (char)(0x80 | opcode);
    if (n < 126) {
        f[h++] = (char)(0x80 | n);
    } else {
        f[h++] = (char)(0x80 | 126);
        f[h++] = (char)(n >> 8);
        f[h++] = (char)(n & 0xff);
    }
    uint32_t m = rnd32();
    unsigned char mask[4] = {m & 0xff, (m >> 8) & 0xff, (m >> 16) & 0xff, m >> 24};
    memcpy(f + h, mask, 4);
    h += 4;
    for (uint32_t i = 0; i < n; i++) f[h + i] = (char)(payload[i] ^ mask[i & 3]);
    raw_send(c, f, h + n);
}

/* ----------------------------------------------------------------------- connect / close */
static void retry_later(int i) {
    struct conn *c = &conns[i];
    c->state = ST_RETRY;
    int delay = c->backoff_ms ? c->backoff_ms : o_retry_ms;
    c->backoff_ms = (uint16_t)(delay * 2 > o_retry_max_ms ? o_retry_max_ms : delay * 2);
    if (rq_tail - rq_head >= rq_cap) { /* grow (compact) */
        int n = rq_tail - rq_head;
        int nc = rq_cap * 2;
        int *nq = malloc(sizeof(int) * nc);
        int64_t *na = malloc(sizeof(int64_t) * nc);
        for (int k = 0; k < n; k++) {
            nq[k] = rq[(rq_head + k) % rq_cap];
            na[k] = rq_at[(rq_head + k) % rq_cap];
        }
        free(rq);
        free(rq_at);
        rq = nq;
        rq_at = na;
        rq_cap = nc;
        rq_head = 0;
        rq_tail = n;
    }
    rq[rq_tail % rq_cap] = i;
    rq_at[rq_tail % rq_cap] = now_ns() + (int64_t)delay * 1000000;
    rq_tail++;
    retries++;
}

static void open_conn(int i) {
    struct conn *c = &conns[i];
    c->in_len = c->out_len = 0;
    c->want_out = 0;
    c->got_4200 = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_errors++;
        retry_later(i);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0, .sin_addr = srcs[i % nsrc]};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        connect_errors++;
        retry_later(i);
        return;
    }
    if (!t_first_connect) t_first_connect = now_ns();
    int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) {
        close(fd);
        connect_errors++;
        retry_later(i);
        return;
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->deadline = o_hs_timeout_ms ? now_ns() + (int64_t)o_hs_timeout_ms * 1000000 : 0;
    pending++;
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

/* the socket is gone: `code` is the close code (0: none), `failed`: before subscribing */
static void lost(struct conn *c, int code) {
    int i = (int)(c - conns);
    int was = c->state;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->in_len = c->out_len = 0;
    if (c->in_cap > 4096) { free(c->in); c->in = NULL; c->in_cap = 0; }
    if (was == ST_SUBSCRIBED) subscribed--;
    else if (was >= ST_CONNECTING && was < ST_SUBSCRIBED) pending--;
    if (code >= 0 && code < 5000) close_codes[code]++;
    int now42 = (code >= 4200 && code < 4300) || c->got_4200;
    if (now42) {
        closed_42xx++;
        if (!t_first_close) t_first_close = now_ns();
    } else if (was == ST_SUBSCRIBED) {
        other_closes++;
    }
    if (was == ST_SUBSCRIBED) c->resub = 1;
    if (!o_reconnect && c->ever_sub) {
        disconnects++;
        c->state = ST_IDLE;
        return;
    }
    if (now42 && o_reconnect) {
        reconnects++;
        c->backoff_ms = 0;
        open_conn(i);
    } else {
        if (was == ST_SUBSCRIBED) disconnects++;
        retry_later(i);
    }
}

/* ------------------------------------------------------------------------------ frames */
static void on_subscribed(struct conn *c) {
    int64_t t = now_ns();
    c->state = ST_SUBSCRIBED;
    c->backoff_ms = 0;
    pending--;
    subscribed++;
    if (!c->ever_sub) {
        c->ever_sub = 1;
        t_last_sub = t;
    }
    if (c->resub) {
        c->resub = 0;
        resubscribed++;
        t_last_resub = t;
    }
}

static int parse_code(const char *p, uint32_t n) { /* "code":4200 in a pusher:error */
    const char *k = memmem(p, n, "\"code\":", 7);
    if (!k) return 0;
    k += 7;
    int v = 0;
    while (k < p + n && *k >= '0' && *k <= '9') v = v * 10 + (*k++ - '0');
    return v;
}

static void sample_latency(const char *p, uint32_t n) {
    /* data is a JSON string inside the frame: ...\"t\":1234... ; accept "t":1234 too */
    const char *k = memmem(p, n, "\\\"t\\\":", 6);
    if (k) k += 6;
    else if ((k = memmem(p, n, "\"t\":", 4))) k += 4;
    else return;
    int64_t t = 0;
    while (k < p + n && *k >= '0' && *k <= '9') t = t * 10 + (*k++ - '0');
    int64_t d = now_ns() - t;
    uint64_t us = d > 0 ? (uint64_t)(d / 1000) : 0;
    hist[hist_idx(us)]++;
    hist_n++;
    if (us > hist_max) hist_max = us;
}

static void on_text(struct conn *c, const char *p, uint32_t n) {
    w_frames++;
    if (c->state == ST_SUBSCRIBED && n >= (uint32_t)ev_prefix_len &&
        memcmp(p, ev_prefix, ev_prefix_len) == 0) {
        w_events++;
        if (++sample_ctr >= (uint64_t)o_sample) {
            sample_ctr = 0;
            sample_latency(p, n);
        }
        return;
    }
    w_other++;
    if (memmem(p, n, "pusher:ping", 11)) {
        pings++;
        static const char pong[] = "{\"event\":\"pusher:pong\",\"data\":{}}";
        ws_send(c, 1, pong, sizeof pong - 1);
    } else if (c->state == ST_WAIT_EST && memmem(p, n, "connection_established", 22)) {
        c->state = ST_WAIT_SUB;
        ws_send(c, 1, sub_msg, (uint32_t)sub_len);
    } else if (c->state == ST_WAIT_SUB && memmem(p, n, "subscription_succeeded", 22)) {
        on_subscribed(c);
    } else if (memmem(p, n, "subscription_error", 18)) {
        sub_errors++;
    } else if (memmem(p, n, "pusher:error", 12)) {
        int code = parse_code(p, n);
        if (code >= 0 && code < 5000) error_codes[code]++;
        if (code >= 4200 && code < 4300) c->got_4200 = 1;
    }
}

/* parse frames in d[0..n); returns bytes consumed; -1: the socket was closed */
static int64_t parse(struct conn *c, char *d, uint32_t n) {
    uint32_t off = 0;
    if (c->state == ST_HANDSHAKE) {
        char *e = memmem(d, n, "\r\n\r\n", 4);
        if (!e) {
            if (n > 16384) { handshake_errors++; lost(c, 0); return -1; }
            return 0;
        }
        if (n < 12 || memcmp(d + 9, "101", 3) != 0) {
            handshake_errors++;
            lost(c, 0);
            return -1;
        }
        off = (uint32_t)(e + 4 - d);
        c->state = ST_WAIT_EST;
    }
    while (n - off >= 2) {
        unsigned char *f = (unsigned char *)d + off;
        int opcode = f[0] & 0x0f;
        int masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        uint32_t h = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = ((uint64_t)f[2] << 8) | f[3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int k = 0; k < 8; k++) len = (len << 8) | f[2 + k];
            h = 10;
        }
        if (masked) h += 4;
        if (len > (64u << 20)) { lost(c, 1009); return -1; }
        if ((uint64_t)(n - off) < h + len) break;
        char *p = (char *)f + h;
        if (masked) {
            unsigned char *mk = f + h - 4;
            for (uint64_t k = 0; k < len; k++) p[k] ^= mk[k & 3];
        }
        off += h + (uint32_t)len;
        switch (opcode) {
        case 1:
            on_text(c, p, (uint32_t)len);
            break;
        case 0: /* continuation: counted with its first fragment */
        case 2:
            break;
        case 8: {
            int code = len >= 2 ? (((unsigned char)p[0]) << 8) | (unsigned char)p[1] : 1005;
            ws_send(c, 8, p, len >= 2 ? 2 : 0);
            lost(c, code);
            return -1;
        }
        case 9:
            ws_send(c, 10, p, (uint32_t)len);
            break;
        default:
            break;
        }
        w_bytes += h + len;
    }
    return off;
}

static void on_readable(struct conn *c) {
    for (;;) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r == 0) { lost(c, 0); return; }
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            lost(c, 0);
            return;
        }
        int64_t used;
        if (c->in_len) {
            buf_append(&c->in, &c->in_len, &c->in_cap, rbuf, (uint32_t)r);
            used = parse(c, c->in, c->in_len);
            if (used < 0) return;
            c->in_len -= (uint32_t)used;
            if (c->in_len && used) memmove(c->in, c->in + used, c->in_len);
        } else {
            used = parse(c, rbuf, (uint32_t)r);
            if (used < 0) return;
            if (used < r) buf_append(&c->in, &c->in_len, &c->in_cap, rbuf + used, (uint32_t)(r - used));
        }
        if (r < (ssize_t)sizeof rbuf) return;
    }
}

static void on_writable(struct conn *c) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            connect_errors++;
            lost(c, 0);
            return;
        }
        c->state = ST_HANDSHAKE;
        set_events(c, EPOLLIN);
        raw_send(c, http_req, (uint32_t)http_req_len);
        return;
    }
    if (c->out_len) {
        ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_len -= (uint32_t)w;
            if (c->out_len) memmove(c->out, c->out + w, c->out_len);
        }
    }
    if (!c->out_len && c->want_out) {
        c->want_out = 0;
        set_events(c, EPOLLIN);
    }
}

/* ------------------------------------------------------------------------------ control */
static long rss_kb(void) { /* resident now (ru_maxrss would include the parent's before exec) */
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void report(const char *type) {
    double u, s;
    cpu_now(&u, &s);
    int64_t t = now_ns();
    printf("{\"type\":\"%s\",\"id\":\"%s\",\"conns\":%d,\"subscribed\":%d,\"pending\":%d,"
           "\"waiting_retry\":%d,\"t_now_ns\":%lld,\"t_first_connect_ns\":%lld,"
           "\"t_last_sub_ns\":%lld,\"t_all_sub_ns\":%lld,"
           "\"connect_errors\":%llu,\"handshake_errors\":%llu,\"sub_errors\":%llu,"
           "\"disconnects\":%llu,\"retries\":%llu,\"pings\":%llu,\"handshake_timeouts\":%llu,"
           "\"closed_42xx\":%llu,\"other_closes\":%llu,\"reconnects\":%llu,"
           "\"resubscribed\":%llu,\"t_first_close_ns\":%lld,\"t_last_resub_ns\":%lld,"
           "\"window_s\":%.6f,\"frames\":%llu,\"events\":%llu,\"other_frames\":%llu,"
           "\"bytes\":%llu,\"cpu_user_s\":%.4f,\"cpu_sys_s\":%.4f,\"cpu_total_s\":%.4f,"
           "\"rss_kb\":%ld,\"lat\":{\"samples\":%llu,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"p999_ms\":%.3f,\"max_ms\":%.3f,\"hist_us\":[",
           type, o_id, o_conns, subscribed, pending, rq_tail - rq_head, (long long)t,
           (long long)t_first_connect, (long long)t_last_sub, (long long)t_all_sub,
           (unsigned long long)connect_errors, (unsigned long long)handshake_errors,
           (unsigned long long)sub_errors, (unsigned long long)disconnects,
           (unsigned long long)retries, (unsigned long long)pings,
           (unsigned long long)handshake_timeouts,
           (unsigned long long)closed_42xx, (unsigned long long)other_closes,
           (unsigned long long)reconnects, (unsigned long long)resubscribed,
           (long long)t_first_close, (long long)t_last_resub,
           w_start ? (t - w_start) / 1e9 : 0.0, (unsigned long long)w_frames,
           (unsigned long long)w_events, (unsigned long long)w_other,
           (unsigned long long)w_bytes, u - w_cpu0_user, s - w_cpu0_sys, u + s,
           rss_kb(), (unsigned long long)hist_n, hist_pct(50), hist_pct(99),
           hist_pct(99.9), hist_max / 1000.0);
    int first = 1;
    for (int i = 0; i < HIST_N; i++) {
        if (!hist[i]) continue;
        printf("%s[%llu,%llu]", first ? "" : ",", (unsigned long long)hist_val(i),
               (unsigned long long)hist[i]);
        first = 0;
    }
    printf("]},\"close_codes\":{");
    first = 1;
    for (int i = 0; i < 5000; i++) {
        if (!close_codes[i]) continue;
        printf("%s\"%d\":%llu", first ? "" : ",", i, (unsigned long long)close_codes[i]);
        first = 0;
    }
    printf("},\"error_codes\":{");
    first = 1;
    for (int i = 0; i < 5000; i++) {
        if (!error_codes[i]) continue;
        printf("%s\"%d\":%llu", first ? "" : ",", i, (unsigned long long)error_codes[i]);
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
}

static void window_start(void) {
    w_frames = w_events = w_other = w_bytes = 0;
    memset(hist, 0, sizeof hist);
    hist_n = hist_max = 0;
    sample_ctr = 0;
    cpu_now(&w_cpu0_user, &w_cpu0_sys);
    w_start = now_ns();
}

static char cbuf[4096];
static int clen;

static int on_stdin(void) { /* returns 1 to quit */
    ssize_t r = read(0, cbuf + clen, sizeof cbuf - 1 - clen);
    if (r <= 0) return 1;
    clen += (int)r;
    char *nl;
    while ((nl = memchr(cbuf, '\n', clen))) {
        *nl = 0;
        if (!strcmp(cbuf, "start")) window_start();
        else if (!strcmp(cbuf, "report")) report("report");
        else if (!strcmp(cbuf, "quit")) return 1;
        int used = (int)(nl + 1 - cbuf);
        memmove(cbuf, nl + 1, clen - used);
        clen -= used;
    }
    if (clen >= (int)sizeof cbuf - 1) clen = 0;
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host H] [--path /app/KEY?protocol=7] [--conns N]\n"
            "  [--src 127.0.1.1,127.0.1.2] [--inflight 64] [--channel bench] [--event bench]\n"
            "  [--sample K] [--reconnect 0|1] [--retry-ms 25] [--retry-max-ms 200] [--id X]\n"
            "  [--handshake-timeout-ms 0 (0: none; else reconnect a handshake not done by then)]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},      {"path", 1, 0, 'P'},
        {"conns", 1, 0, 'n'},    {"src", 1, 0, 's'},       {"inflight", 1, 0, 'i'},
        {"channel", 1, 0, 'c'},  {"event", 1, 0, 'e'},     {"sample", 1, 0, 'k'},
        {"reconnect", 1, 0, 'r'}, {"retry-ms", 1, 0, 'R'}, {"retry-max-ms", 1, 0, 'M'},
        {"id", 1, 0, 'I'},       {"handshake-timeout-ms", 1, 0, 'T'}, {0, 0, 0, 0}};
    const char *src_list = "127.0.0.1";
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': o_host = optarg; break;
        case 'p': o_port = atoi(optarg); break;
        case 'P': o_path = optarg; break;
        case 'n': o_conns = atoi(optarg); break;
        case 's': src_list = optarg; break;
        case 'i': o_inflight = atoi(optarg); break;
        case 'c': o_channel = optarg; break;
        case 'e': o_event = optarg; break;
        case 'k': o_sample = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
        case 'r': o_reconnect = atoi(optarg); break;
        case 'R': o_retry_ms = atoi(optarg); break;
        case 'M': o_retry_max_ms = atoi(optarg); break;
        case 'I': o_id = optarg; break;
        case 'T': o_hs_timeout_ms = atoi(optarg); break;
        default: usage();
        }
    }
    if (o_conns <= 0) usage();
    signal(SIGPIPE, SIG_IGN);
    rng ^= (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)o_conns + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* source addresses */
    char *sl = strdup(src_list);
    srcs = calloc(256, sizeof *srcs);
    for (char *tok = strtok(sl, ","); tok && nsrc < 256; tok = strtok(NULL, ",")) {
        if (inet_pton(AF_INET, tok, &srcs[nsrc]) != 1) { fprintf(stderr, "bad --src %s\n", tok); return 2; }
        nsrc++;
    }
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)o_port);
    if (inet_pton(AF_INET, o_host, &dst.sin_addr) != 1) { fprintf(stderr, "bad --host\n"); return 2; }
    http_req_len = snprintf(http_req, sizeof http_req,
                            "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n",
                            o_path, o_host, o_port);
    sub_len = snprintf(sub_msg, sizeof sub_msg,
                       "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"%s\"}}", o_channel);
    ev_prefix_len = snprintf(ev_prefix, sizeof ev_prefix, "{\"event\":\"%s\"", o_event);

    conns = calloc((size_t)o_conns, sizeof *conns);
    for (int i = 0; i < o_conns; i++) conns[i].fd = -1;
    rq_cap = 1024;
    rq = malloc(sizeof(int) * rq_cap);
    rq_at = malloc(sizeof(int64_t) * rq_cap);

    ep = epoll_create1(EPOLL_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event se = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &se);
    window_start();

    struct epoll_event evs[1024];
    int64_t next_sweep = 0;
    for (;;) {
        while (next_open < o_conns && pending < o_inflight) open_conn(next_open++);
        int64_t t = now_ns();
        while (rq_head < rq_tail && rq_at[rq_head % rq_cap] <= t) {
            int i = rq[rq_head % rq_cap];
            rq_head++;
            if (conns[i].state == ST_RETRY) open_conn(i);
        }
        if (!all_sub_printed && subscribed == o_conns) {
            all_sub_printed = 1;
            t_all_sub = now_ns();
            report("subscribed");
        }
        int timeout = o_hs_timeout_ms ? 100 : 1000;
        if (o_hs_timeout_ms && t >= next_sweep) { /* handshakes past their deadline */
            next_sweep = t + 100000000;
            for (int i = 0; i < o_conns; i++) {
                struct conn *c = &conns[i];
                if (c->state >= ST_CONNECTING && c->state < ST_SUBSCRIBED && c->deadline &&
                    c->deadline <= t) {
                    handshake_timeouts++;
                    lost(c, 0);
                }
            }
        }
        if (rq_head < rq_tail) {
            int64_t d = (rq_at[rq_head % rq_cap] - t) / 1000000;
            timeout = d < 0 ? 0 : d < 1000 ? (int)d + 1 : 1000;
        }
        int n = epoll_wait(ep, evs, 1024, timeout);
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id == 0xffffffffu) {
                if (on_stdin()) goto done;
                continue;
            }
            struct conn *c = &conns[id];
            if (c->fd < 0) continue;
            uint32_t e = evs[k].events;
            if (c->state == ST_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(c);
                continue;
            }
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (c->fd >= 0 && (e & EPOLLOUT)) on_writable(c);
        }
    }
done:
    for (int i = 0; i < o_conns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
