/*
 * floor: the least a Pusher-style fan-out server can do on this kernel, as a third "server"
 * for bench/scale.py (`--servers pushwire,soketi,floor`). It shows how much of a server's CPU
 * per delivered message is the kernel's own cost of one write per socket, so that ratios
 * against soketi can be read against what no server written on top of send() can beat.
 *
 * One thread, epoll, non-blocking sockets, libc only (plus liburing when built with
 * -DFLOOR_URING). On one port it serves just what bench/loadgen/loadgen.c and the benchmark
 * publisher (bench/common.py) use:
 *   - a WebSocket upgrade: a fixed 101 answer (the Sec-WebSocket-Accept is not computed: the
 *     generator does not check it) and pusher:connection_established; a client text frame
 *     containing "pusher:subscribe" gets pusher_internal:subscription_succeeded and makes the
 *     socket a subscriber; a close frame closes it.
 *   - any other HTTP request with a body (the signed POST /apps/ID/events): NOT authenticated,
 *     not validated, answered 200 "{}" on the kept-alive connection; its "data" string is
 *     copied into one pre-built frame {"event":"bench","channel":"bench","data":...} and that
 *     frame is written to every subscriber: one send() per socket (mode "send", default), or
 *     one io_uring SEND per socket submitted in batches of 4096 (mode "uring").
 * A write that does not complete is counted as a drop and not retried (the generator counts
 * the lost message too): there is no buffering, no per-socket state but the fd, no timers.
 *
 *   floor PORT [send|uring]      (prints its counters as one JSON line on SIGTERM)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef FLOOR_URING
#include <liburing.h>
#endif

enum { ST_HTTP, ST_WS };
struct conn {
    int fd;
    int state;
    int sub_idx; /* index in subs[] or -1 */
    char *buf;
    size_t len, cap;
};

static struct conn **by_fd; /* fd -> conn */
static int max_fd = 1 << 16;
static int *subs, nsubs;
static uint64_t events, sent, drops, requests;
static volatile sig_atomic_t stop;
static int use_uring;
#ifdef FLOOR_URING
static struct io_uring ring;
#endif

static const char UPGRADE[] =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Accept: floor\r\n\r\n";
static const char OK[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
static const char ESTABLISHED[] =
    "{\"event\":\"pusher:connection_established\",\"data\":\"{\\\"socket_id\\\":\\\"1.1\\\","
    "\\\"activity_timeout\\\":120}\"}";
static const char SUBSCRIBED[] =
    "{\"event\":\"pusher_internal:subscription_succeeded\",\"channel\":\"bench\",\"data\":\"{}\"}";

static void on_term(int sig) { (void)sig; stop = 1; }

/* a server frame (not masked) of opcode op around p[0..n) into out; returns its length */
static size_t frame(unsigned char *out, int op, const char *p, size_t n) {
    size_t h = 2;
    out[0] = (unsigned char)(0x80 | op);
    if (n < 126) {
        out[1] = (unsigned char)n;
    } else {
        out[1] = 126;
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
        h = 4;
    }
    memcpy(out + h, p, n);
    return h + n;
}

static void put(int fd, const void *p, size_t n) {
    if (send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)n) drops++;
}

static void put_frame(int fd, const char *p) {
    unsigned char out[512];
    put(fd, out, frame(out, 1, p, strlen(p)));
}

static void unsubscribe(struct conn *c) {
    if (c->sub_idx < 0) return;
    int last = subs[--nsubs];
    subs[c->sub_idx] = last;
    by_fd[last]->sub_idx = c->sub_idx;
    c->sub_idx = -1;
}

static void drop_conn(struct conn *c) {
    unsubscribe(c);
    by_fd[c->fd] = NULL;
    close(c->fd);
    free(c->buf);
    free(c);
}

static void fan_out(const unsigned char *f, size_t n) {
    events++;
    if (!use_uring) {
        for (int i = 0; i < nsubs; i++) {
            if (send(subs[i], f, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n) sent++;
            else drops++;
        }
        return;
    }
#ifdef FLOOR_URING
    int i = 0;
    while (i < nsubs) {
        int batch = 0;
        struct io_uring_sqe *sqe;
        while (i < nsubs && (sqe = io_uring_get_sqe(&ring)) != NULL) {
            io_uring_prep_send(sqe, subs[i++], f, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            batch++;
        }
        io_uring_submit_and_wait(&ring, (unsigned)batch);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            if (cqe->res == (int)n) sent++;
            else drops++;
            seen++;
        }
        io_uring_cq_advance(&ring, seen);
    }
#endif
}

/* one REST request body: copy its "data":"..." member into a bench frame and fan it out */
static void trigger(const char *body, size_t n) {
    static const char head[] = "{\"event\":\"bench\",\"channel\":\"bench\",";
    const char *d = memmem(body, n, "\"data\":", 7);
    if (!d) return;
    const char *end = body + n;
    while (end > d && end[-1] != '}') end--; /* the body's closing brace */
    if (end <= d) return;
    size_t dn = (size_t)(end - 1 - d);
    char payload[65536];
    if (sizeof head - 1 + dn + 1 > sizeof payload) return;
    memcpy(payload, head, sizeof head - 1);
    memcpy(payload + sizeof head - 1, d, dn);
    payload[sizeof head - 1 + dn] = '}';
    static unsigned char out[65536 + 8];
    fan_out(out, frame(out, 1, payload, sizeof head + dn));
}

/* handle what is buffered on c; returns 0 when c was closed */
static int process(struct conn *c) {
    for (;;) {
        c->buf[c->len] = 0; /* the header search below stops at the end of the data */
        if (c->state == ST_HTTP) {
            char *e = memmem(c->buf, c->len, "\r\n\r\n", 4);
            if (!e) return c->len < 65536 || (drop_conn(c), 0);
            size_t hl = (size_t)(e + 4 - c->buf);
            if (memmem(c->buf, hl, "websocket", 9) || memmem(c->buf, hl, "WebSocket", 9)) {
                put(c->fd, UPGRADE, sizeof UPGRADE - 1);
                put_frame(c->fd, ESTABLISHED);
                c->state = ST_WS;
                memmove(c->buf, c->buf + hl, c->len - hl);
                c->len -= hl;
                continue;
            }
            size_t body = 0;
            char *cl = strcasestr(c->buf, "content-length:");
            if (cl && cl < e) body = strtoul(cl + 15, NULL, 10);
            if (c->len < hl + body) return 1;
            requests++;
            trigger(c->buf + hl, body);
            put(c->fd, OK, sizeof OK - 1);
            memmove(c->buf, c->buf + hl + body, c->len - hl - body);
            c->len -= hl + body;
            continue;
        }
        /* WebSocket: client frames are masked */
        if (c->len < 2) return 1;
        unsigned char *f = (unsigned char *)c->buf;
        int op = f[0] & 15;
        size_t n = f[1] & 127, h = 2;
        if (n == 126) {
            if (c->len < 4) return 1;
            n = (size_t)f[2] << 8 | f[3];
            h = 4;
        } else if (n == 127) {
            drop_conn(c);
            return 0;
        }
        if (c->len < h + 4 + n) return 1;
        unsigned char *m = f + h, *p = f + h + 4;
        for (size_t i = 0; i < n; i++) p[i] ^= m[i & 3];
        if (op == 8) {
            drop_conn(c);
            return 0;
        }
        if (op == 1 && memmem(p, n, "pusher:subscribe", 16)) {
            put_frame(c->fd, SUBSCRIBED);
            if (c->sub_idx < 0) {
                c->sub_idx = nsubs;
                subs[nsubs++] = c->fd;
            }
        } else if (op == 1 && memmem(p, n, "pusher:ping", 11)) {
            put_frame(c->fd, "{\"event\":\"pusher:pong\",\"data\":\"{}\"}");
        } else if (op == 9) {
            unsigned char out[140];
            put(c->fd, out, frame(out, 10, (char *)p, n < 125 ? n : 125));
        }
        memmove(c->buf, c->buf + h + 4 + n, c->len - h - 4 - n);
        c->len -= h + 4 + n;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: floor PORT [send|uring]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    use_uring = argc > 2 && strcmp(argv[2], "uring") == 0;
#ifdef FLOOR_URING
    if (use_uring && io_uring_queue_init(4096, &ring, 0) < 0) {
        perror("io_uring_queue_init");
        return 1;
    }
#else
    if (use_uring) {
        fprintf(stderr, "floor: built without liburing\n");
        return 2;
    }
#endif
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    by_fd = calloc((size_t)max_fd, sizeof *by_fd);
    subs = calloc((size_t)max_fd, sizeof *subs);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event le = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &le);
    struct epoll_event evs[512];
    while (!stop) {
        int k = epoll_wait(ep, evs, 512, 200);
        for (int j = 0; j < k; j++) {
            int fd = evs[j].data.fd;
            if (fd == ls) {
                int s;
                while ((s = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (s >= max_fd) {
                        close(s);
                        continue;
                    }
                    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    c->fd = s;
                    c->sub_idx = -1;
                    by_fd[s] = c;
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = s};
                    epoll_ctl(ep, EPOLL_CTL_ADD, s, &e);
                }
                continue;
            }
            struct conn *c = by_fd[fd];
            if (!c) continue;
            for (;;) {
                if (c->cap - c->len < 4096) {
                    c->cap = c->cap ? c->cap * 2 : 8192;
                    c->buf = realloc(c->buf, c->cap);
                }
                ssize_t r = read(fd, c->buf + c->len, c->cap - c->len - 1);
                if (r > 0) {
                    c->len += (size_t)r;
                    c->buf[c->len] = 0;
                    if (!process(c)) break;
                    continue;
                }
                if (r == 0 || (errno != EAGAIN && errno != EINTR)) drop_conn(c);
                break;
            }
        }
    }
    printf("{\"mode\":\"%s\",\"requests\":%llu,\"events\":%llu,\"sent\":%llu,\"drops\":%llu}\n",
           use_uring ? "uring" : "send", (unsigned long long)requests,
           (unsigned long long)events, (unsigned long long)sent, (unsigned long long)drops);
    return 0;
}
