/* udpgen: the UDP request/response load of the benchmark suite, and the pods' echo server.
 *
 *   udpgen server ADDR PORT                      echo every datagram back (the pods)
 *   udpgen probe  ADDR PORT                      one query, exit 0 on an answer within 1 s
 *   udpgen rr     ADDR PORT SECONDS SLOTS SIZE   closed loop: SLOTS client sockets, each with
 *                                                one query in flight, the next sent on its answer
 *   udpgen flows  ADDR PORT SECONDS SLOTS SIZE   the same, but every query from a NEW socket
 *                                                (a new random source port: a new flow)
 *
 * A query without an answer within 200 ms counts as lost and the slot sends a new one (its
 * answer, if it comes later, is recognised by its sequence number and ignored); a send that
 * fails (EAGAIN, ECONNREFUSED) counts as send_failed and is retried at the timeout. Bounded:
 * stops after SECONDS (at most 600) and after 2^32 queries. Prints one line:
 *   JSON {"secs":..,"sent":..,"answered":..,"lost":..,"send_failed":..,"open_failed":..,"p50_us":..,"p99_us":..,"p999_us":..}
 * Two threads, SLOTS/2 each. Why not sockperf or dnsperf: both keep a fixed set of source
 * ports (no new flows), and sockperf's --mps=max mode mixes overload loss into the rate.
 * Built by bench/run.sh with `cc -O2 -pthread`; talks only to the address it is given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_NS 200000000ULL
#define HIST_US 200001 /* 1 µs buckets up to the timeout */
#define MAX_SLOTS 4096
#define THREADS 2

static struct sockaddr_in target;
static int flows_mode, size;
static uint64_t end_ns;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static int open_socket(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

struct slot {
  int fd;
  uint64_t seq, sent_ns;
  int failed; /* the last send failed: the timeout retries it, not counted lost */
};

struct worker {
  int slots;
  uint64_t sent, answered, lost, send_failed, open_failed;
  uint32_t *hist;
};

static void send_query(struct slot *s, int ep, uint32_t id, struct worker *w) {
  char buf[65536];
  if (s->fd < 0 || flows_mode) {
    if (s->fd >= 0) close(s->fd);
    s->fd = open_socket();
    if (s->fd < 0) {
      w->open_failed++;
      s->sent_ns = now_ns(); /* retried at the timeout */
      s->failed = 1;
      return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = id};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
  }
  s->seq++;
  memset(buf, 'q', (size_t)size);
  memcpy(buf, &s->seq, sizeof s->seq);
  memcpy(buf + 8, &id, sizeof id);
  s->sent_ns = now_ns();
  s->failed = send(s->fd, buf, (size_t)size, 0) != size;
  if (s->failed) w->send_failed++; /* refused or full: the timeout retries */
  else w->sent++;
}

static void *run(void *arg) {
  struct worker *w = arg;
  struct slot *s = calloc((size_t)w->slots, sizeof *s);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  char buf[65536];
  for (int i = 0; i < w->slots; i++) {
    s[i].fd = -1;
    send_query(&s[i], ep, (uint32_t)i, w);
  }
  struct epoll_event evs[256];
  uint64_t last_sweep = now_ns();
  for (;;) {
    uint64_t t = now_ns();
    if (t >= end_ns || w->sent >= 0xffffffffULL) break;
    int n = epoll_wait(ep, evs, 256, 10);
    t = now_ns();
    for (int i = 0; i < n; i++) {
      uint32_t id = evs[i].data.u32;
      struct slot *sl = &s[id];
      for (;;) {
        ssize_t r = recv(sl->fd, buf, sizeof buf, 0);
        if (r < 0) break;
        uint64_t seq;
        if (r < 12) continue;
        memcpy(&seq, buf, sizeof seq);
        if (seq != sl->seq) continue; /* a late answer to a query already counted lost */
        uint64_t us = (t - sl->sent_ns) / 1000;
        w->hist[us < HIST_US ? us : HIST_US - 1]++;
        w->answered++;
        if (t < end_ns) send_query(sl, ep, id, w);
        else sl->sent_ns = UINT64_MAX;
        break;
      }
    }
    if (t - last_sweep > 10000000ULL) {
      last_sweep = t;
      for (int i = 0; i < w->slots; i++)
        if (s[i].sent_ns != UINT64_MAX && t > s[i].sent_ns + TIMEOUT_NS) {
          if (!s[i].failed) w->lost++;
          send_query(&s[i], ep, (uint32_t)i, w);
        }
    }
  }
  /* queries still in flight at the end are neither answered nor lost */
  for (int i = 0; i < w->slots; i++)
    if (s[i].fd >= 0) close(s[i].fd);
  close(ep);
  free(s);
  return NULL;
}

static double pct(uint64_t *h, uint64_t total, double p) {
  uint64_t want = (uint64_t)(p * (double)total), acc = 0;
  for (int i = 0; i < HIST_US; i++) {
    acc += h[i];
    if (acc > want) return i;
  }
  return HIST_US - 1;
}

static int server(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int one = 1, big = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (fd < 0 || bind(fd, (struct sockaddr *)&target, sizeof target) < 0) {
    perror("bind");
    return 1;
  }
  enum { B = 32 };
  static char bufs[B][2048];
  struct mmsghdr m[B];
  struct iovec iov[B];
  struct sockaddr_in from[B];
  for (;;) {
    for (int i = 0; i < B; i++) {
      iov[i] = (struct iovec){bufs[i], sizeof bufs[i]};
      m[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                     .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(fd, m, B, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("recvmmsg");
      return 1;
    }
    for (int i = 0; i < n; i++) iov[i].iov_len = m[i].msg_len;
    sendmmsg(fd, m, (unsigned)n, 0);
  }
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: udpgen server|probe|rr|flows ADDR PORT [SECONDS SLOTS SIZE]\n");
    return 2;
  }
  target.sin_family = AF_INET;
  target.sin_port = htons((uint16_t)atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1) {
    fprintf(stderr, "bad address %s\n", argv[2]);
    return 2;
  }
  if (!strcmp(argv[1], "server")) return server();
  if (!strcmp(argv[1], "probe")) {
    int fd = open_socket();
    char q[16] = "probe", a[64];
    if (fd < 0) return 1;
    for (int i = 0; i < 3; i++) {
      send(fd, q, sizeof q, 0);
      for (int k = 0; k < 100; k++) { /* nonblocking socket: look for up to 1 s */
        if (recv(fd, a, sizeof a, 0) > 0) return 0;
        usleep(10000);
      }
    }
    return 1;
  }
  if (argc < 7) return 2;
  flows_mode = !strcmp(argv[1], "flows");
  if (!flows_mode && strcmp(argv[1], "rr")) return 2;
  double secs = atof(argv[4]);
  int slots = atoi(argv[5]);
  size = atoi(argv[6]);
  if (secs <= 0 || secs > 600 || slots < THREADS || slots > MAX_SLOTS || size < 12 || size > 65507)
    return 2;
  uint64_t start = now_ns();
  end_ns = start + (uint64_t)(secs * 1e9);
  pthread_t th[THREADS];
  struct worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (struct worker){.slots = slots / THREADS, .hist = calloc(HIST_US, sizeof(uint32_t))};
    pthread_create(&th[i], NULL, run, &w[i]);
  }
  static uint64_t hist[HIST_US];
  uint64_t sent = 0, answered = 0, lost = 0, send_failed = 0, open_failed = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    sent += w[i].sent;
    answered += w[i].answered;
    lost += w[i].lost;
    open_failed += w[i].open_failed;
    send_failed += w[i].send_failed;
    for (int k = 0; k < HIST_US; k++) hist[k] += w[i].hist[k];
  }
  double el = (double)(now_ns() - start) / 1e9;
  printf("JSON {\"secs\":%.3f,\"sent\":%llu,\"answered\":%llu,\"lost\":%llu,\"send_failed\":%llu,\"open_failed\":%llu,"
         "\"p50_us\":%.0f,\"p99_us\":%.0f,\"p999_us\":%.0f}\n",
         el, (unsigned long long)sent, (unsigned long long)answered, (unsigned long long)lost,
         (unsigned long long)send_failed, (unsigned long long)open_failed, pct(hist, answered, 0.5), pct(hist, answered, 0.99),
         pct(hist, answered, 0.999));
  return answered > 0 ? 0 : 1;
}
