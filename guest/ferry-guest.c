/*
 * ferry-guest: the agent inside Ferry's tiny guest. It owns the guest side of the host<->guest channel
 * (the virtio-serial port org.ferry.guest.0 and UDP port 7777), the boot id report, the memory dirtier with
 * its verifiable pattern, and the disk fill/sum used to prove that memory and disks survived a migration.
 *
 * Protocol (same on both channels): one command per line (serial) or per datagram (UDP), one JSON reply
 * line. A command may be prefixed with `#<tag> `; the reply then starts with `"tag":<tag>` so that a
 * host can drop a late reply to a command it already gave up on.
 *
 * Build: cc -static -O2 -Wall -Wextra -pthread -o build/ferry-guest guest/ferry-guest.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "org.ferry.guest.0"
#define UDP_PORT 7777
#define PAGE 4096u
/* The dirtier releases its lock at this granularity, so a verify waits at most one chunk. */
#define CHUNK_PAGES 64u
#define MIB (1024u * 1024u)
#define REPLY_MAX 1024
/* A reply with its optional tag prefix and newline. */
#define OUT_MAX (REPLY_MAX + 64)
#define LINE_MAX_LEN 1024
#define DISK_MAX_MIB 4096u

static char boot_id[64] = "unknown";

static uint64_t now_ns(clockid_t clk) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ms(void) { return now_ns(CLOCK_MONOTONIC) / 1000000ull; }

static void logmsg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("ferry-guest: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ---------------------------------------------------------------------------------------------- */
/* The dirtier: pass after pass, increments the first byte of every page in order (the A-B pattern of
 * QEMU's migration tests). With `passes` finished passes and the next page to touch at `cursor`, page i
 * holds (passes + (i < cursor)) mod 256; any other value means a write was lost or a page was corrupted. */

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int running;
  atomic_int pause; /* set by the command thread before it takes mu: the dirtier then waits */
  int stop;
  uint8_t *mem;
  size_t pages;
  size_t cursor;
  uint64_t passes;
  unsigned mib;
  unsigned rate_mibps; /* 0 = unpaced */
} D = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void sleep_ns(uint64_t ns) {
  struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void *dirtier_main(void *arg) {
  (void)arg;
  /* Nice, so that probes and commands are answered promptly on a single vCPU. */
  setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
  uint64_t t0 = now_ns(CLOCK_MONOTONIC);
  uint64_t touched = 0; /* pages touched since t0 */
  for (;;) {
    pthread_mutex_lock(&D.mu);
    if (atomic_load(&D.pause)) {
      while (atomic_load(&D.pause) && !D.stop) pthread_cond_wait(&D.cv, &D.mu);
      t0 = now_ns(CLOCK_MONOTONIC);
      touched = 0;
    }
    if (D.stop) {
      pthread_mutex_unlock(&D.mu);
      break;
    }
    size_t end = D.cursor + CHUNK_PAGES;
    if (end > D.pages) end = D.pages;
    for (size_t i = D.cursor; i < end; i++) D.mem[i * PAGE]++;
    touched += end - D.cursor;
    D.cursor = end;
    if (D.cursor == D.pages) {
      D.cursor = 0;
      D.passes++;
    }
    unsigned rate = D.rate_mibps;
    pthread_mutex_unlock(&D.mu);
    if (rate == 0) continue;
    uint64_t pages_per_s = (uint64_t)rate * (MIB / PAGE);
    uint64_t due = touched * 1000000000ull / pages_per_s;
    uint64_t elapsed = now_ns(CLOCK_MONOTONIC) - t0;
    if (elapsed < due) {
      sleep_ns(due - elapsed);
    } else if (elapsed > due + 100000000ull) {
      /* Far behind (the guest was paused or starved): don't burst to catch up. */
      t0 = now_ns(CLOCK_MONOTONIC);
      touched = 0;
    }
  }
  return NULL;
}

/* Stops the dirtier at a chunk (= page) boundary; it stays stopped until dirtier_resume(). */
static void dirtier_hold(void) {
  atomic_store(&D.pause, 1);
  pthread_mutex_lock(&D.mu);
}

static void dirtier_resume(void) {
  atomic_store(&D.pause, 0);
  pthread_cond_broadcast(&D.cv);
  pthread_mutex_unlock(&D.mu);
}

static void dirty_stop(void) {
  if (!D.running) return;
  dirtier_hold();
  D.stop = 1;
  dirtier_resume();
  pthread_join(D.thread, NULL);
  munmap(D.mem, (size_t)D.mib * MIB);
  D.mem = NULL;
  D.running = 0;
  D.stop = 0;
  D.pages = D.cursor = 0;
  D.passes = 0;
}

static int dirty_start(unsigned mib, unsigned rate, char *out) {
  dirty_stop();
  void *mem = mmap(NULL, (size_t)mib * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"mmap\",\"errno\":%d,\"message\":\"%s\"}", errno,
                    strerror(errno));
  }
  /* Touch every page now, so the guest really owns the memory before the first pass. */
  memset(mem, 0, (size_t)mib * MIB);
  D.mem = mem;
  D.mib = mib;
  D.rate_mibps = rate;
  D.pages = (size_t)mib * (MIB / PAGE);
  D.cursor = 0;
  D.passes = 0;
  D.stop = 0;
  atomic_store(&D.pause, 0);
  int err = pthread_create(&D.thread, NULL, dirtier_main, NULL);
  if (err != 0) {
    munmap(mem, (size_t)mib * MIB);
    D.mem = NULL;
    return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"thread\",\"errno\":%d}", err);
  }
  D.running = 1;
  return snprintf(out, REPLY_MAX, "{\"ok\":true,\"mib\":%u,\"rateMBps\":%u,\"pages\":%zu}", mib, rate, D.pages);
}

static int dirty_verify(char *out) {
  if (!D.running) return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"not running\"}");
  dirtier_hold();
  size_t pages = D.pages, cursor = D.cursor, bad = 0, first_bad = 0;
  uint64_t passes = D.passes;
  uint8_t expected_first = 0, found_first = 0;
  for (size_t i = 0; i < pages; i++) {
    uint8_t expected = (uint8_t)(passes + (i < cursor ? 1u : 0u));
    uint8_t found = D.mem[i * PAGE];
    if (found != expected) {
      if (bad == 0) {
        first_bad = i;
        expected_first = expected;
        found_first = found;
      }
      bad++;
    }
  }
  dirtier_resume();
  if (bad == 0) {
    return snprintf(out, REPLY_MAX, "{\"ok\":true,\"pages\":%zu,\"passes\":%" PRIu64 ",\"cursor\":%zu}", pages, passes,
                    cursor);
  }
  return snprintf(out, REPLY_MAX,
                  "{\"ok\":false,\"error\":\"pattern\",\"firstBadPage\":%zu,\"expected\":%u,\"found\":%u,"
                  "\"badPages\":%zu,\"pages\":%zu,\"passes\":%" PRIu64 ",\"cursor\":%zu}",
                  first_bad, expected_first, found_first, bad, pages, passes, cursor);
}

static int dirty_corrupt(size_t page, char *out) {
  if (!D.running) return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"not running\"}");
  if (page >= D.pages) return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"page out of range\"}");
  dirtier_hold();
  /* Half a turn away from the expected value: never mistaken for one more or one less increment. */
  D.mem[page * PAGE] ^= 0x80;
  dirtier_resume();
  return snprintf(out, REPLY_MAX, "{\"ok\":true,\"page\":%zu}", page);
}

/* ---------------------------------------------------------------------------------------------- */
/* Disks: a pattern derived from a seed (splitmix64), written with O_DIRECT, and a 64-bit FNV-1a sum read
 * back with O_DIRECT so that the page cache can't answer for the device. */

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= FNV_PRIME;
  }
  return h;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int dev_path(const char *arg, char *path, size_t len) {
  if (strstr(arg, "..") != NULL || strlen(arg) > 48) return -1;
  for (const char *c = arg; *c; c++) {
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '/' || *c == '-' || *c == '_')) return -1;
  }
  if (strncmp(arg, "/dev/", 5) == 0) snprintf(path, len, "%s", arg);
  else if (strchr(arg, '/') == NULL) snprintf(path, len, "/dev/%s", arg);
  else return -1;
  return 0;
}

static int open_direct(const char *path, int flags) {
  int fd = open(path, flags | O_DIRECT | O_CLOEXEC);
  if (fd < 0 && errno == EINVAL) fd = open(path, flags | O_CLOEXEC);
  return fd;
}

static int io_error(char *out, const char *what, const char *path) {
  int e = errno;
  return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"%s\",\"device\":\"%s\",\"errno\":%d,\"message\":\"%s\"}",
                  what, path, e, strerror(e));
}

static int disk_io(int fill, const char *dev, unsigned mib, uint64_t seed, char *out) {
  char path[64];
  if (dev_path(dev, path, sizeof path) != 0) return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"bad device\"}");
  if (mib == 0 || mib > DISK_MAX_MIB) return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"bad size\"}");
  void *buf = NULL;
  if (posix_memalign(&buf, PAGE, MIB) != 0) return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"memory\"}");
  int fd = open_direct(path, fill ? O_WRONLY : O_RDONLY);
  if (fd < 0) {
    int n = io_error(out, "open", path);
    free(buf);
    return n;
  }
  uint64_t h = FNV_OFFSET, s = seed;
  int n = 0;
  for (unsigned m = 0; m < mib && n == 0; m++) {
    if (fill) {
      uint64_t *w = buf;
      for (size_t i = 0; i < MIB / 8; i++) w[i] = splitmix64(&s);
      if (pwrite(fd, buf, MIB, (off_t)m * MIB) != (ssize_t)MIB) n = io_error(out, "write", path);
    } else if (pread(fd, buf, MIB, (off_t)m * MIB) != (ssize_t)MIB) {
      n = io_error(out, "read", path);
    }
    if (n == 0) h = fnv1a(h, buf, MIB);
  }
  if (n == 0 && fill && fsync(fd) != 0) n = io_error(out, "fsync", path);
  close(fd);
  free(buf);
  if (n != 0) return n;
  return snprintf(out, REPLY_MAX, "{\"ok\":true,\"device\":\"%s\",\"mib\":%u,\"sum\":\"%016" PRIx64 "\"}", path, mib, h);
}

/* ---------------------------------------------------------------------------------------------- */
/* Commands */

static int parse_uint(const char *s, unsigned long long max, unsigned long long *v) {
  if (s == NULL || *s < '0' || *s > '9') return -1;
  char *end;
  errno = 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || x > max) return -1;
  *v = x;
  return 0;
}

static int handle_info(char *out) {
  uint64_t up = now_ns(CLOCK_BOOTTIME) / 1000000ull;
  int running = D.running;
  uint64_t passes = 0;
  if (running) {
    dirtier_hold();
    passes = D.passes;
    dirtier_resume();
  }
  return snprintf(out, REPLY_MAX,
                  "{\"ok\":true,\"bootId\":\"%s\",\"uptimeMs\":%" PRIu64
                  ",\"dirty\":{\"running\":%s,\"mib\":%u,\"rateMBps\":%u,\"passes\":%" PRIu64 "}}",
                  boot_id, up, running ? "true" : "false", running ? D.mib : 0, running ? D.rate_mibps : 0, passes);
}

static int usage_error(char *out, const char *msg) {
  return snprintf(out, REPLY_MAX, "{\"ok\":false,\"error\":\"%s\"}", msg);
}

/* Handles one command line (modified in place); writes one JSON object without newline into out
 * (OUT_MAX bytes, two of them left for the caller's newline). */
static void handle(char *line, char *out) {
  char *argv[12];
  int argc = 0;
  for (char *save = NULL, *t = strtok_r(line, " \t\r\n", &save); t != NULL && argc < 12;
       t = strtok_r(NULL, " \t\r\n", &save)) {
    argv[argc++] = t;
  }
  unsigned long long tag = 0;
  int tagged = 0;
  char body[REPLY_MAX];
  char **a = argv;
  if (argc > 0 && a[0][0] == '#' && parse_uint(a[0] + 1, 1ull << 53, &tag) == 0) {
    tagged = 1;
    a++;
    argc--;
  }
  unsigned long long x, y, z;
  if (argc == 0) {
    usage_error(body, "empty command");
  } else if (strcmp(a[0], "probe") == 0 && argc == 2 && parse_uint(a[1], 1ull << 53, &x) == 0) {
    snprintf(body, sizeof body, "{\"ok\":true,\"probe\":%llu}", x);
  } else if (strcmp(a[0], "info") == 0 && argc == 1) {
    handle_info(body);
  } else if (strcmp(a[0], "dirty") == 0 && argc >= 2) {
    if (strcmp(a[1], "start") == 0) {
      unsigned long long mib = 0, rate = 0;
      int ok = 1, have_mib = 0;
      for (int i = 2; i < argc && ok; i += 2) {
        if (i + 1 >= argc) ok = 0;
        else if (strcmp(a[i], "--mib") == 0) {
          ok = parse_uint(a[i + 1], 1ull << 20, &mib) == 0 && mib > 0;
          have_mib = 1;
        }
        else if (strcmp(a[i], "--rate") == 0) ok = parse_uint(a[i + 1], 1ull << 20, &rate) == 0;
        else ok = 0;
      }
      if (!ok || !have_mib) usage_error(body, "usage: dirty start --mib N [--rate MiB/s]");
      else dirty_start((unsigned)mib, (unsigned)rate, body);
    } else if (strcmp(a[1], "stop") == 0 && argc == 2) {
      int was = D.running;
      dirty_stop();
      snprintf(body, sizeof body, "{\"ok\":true,\"wasRunning\":%s}", was ? "true" : "false");
    } else if (strcmp(a[1], "verify") == 0 && argc == 2) {
      dirty_verify(body);
    } else if (strcmp(a[1], "corrupt") == 0 && argc == 3 && parse_uint(a[2], 1ull << 40, &x) == 0) {
      dirty_corrupt((size_t)x, body);
    } else {
      usage_error(body, "unknown command");
    }
  } else if (strcmp(a[0], "disk") == 0 && argc >= 2) {
    if (strcmp(a[1], "fill") == 0 && argc == 5 && parse_uint(a[3], DISK_MAX_MIB, &y) == 0 &&
        parse_uint(a[4], UINT64_MAX, &z) == 0) {
      disk_io(1, a[2], (unsigned)y, z, body);
    } else if (strcmp(a[1], "sum") == 0 && argc == 4 && parse_uint(a[3], DISK_MAX_MIB, &y) == 0) {
      disk_io(0, a[2], (unsigned)y, 0, body);
    } else {
      usage_error(body, "unknown command");
    }
  } else {
    usage_error(body, "unknown command");
  }
  if (tagged) snprintf(out, OUT_MAX - 2, "{\"tag\":%llu,%s", tag, body + 1);
  else snprintf(out, OUT_MAX - 2, "%s", body);
}

/* ---------------------------------------------------------------------------------------------- */
/* Channels */

static int udp_fd = -1;
/*
 * The serial port has three states: closed (not found yet, or failed: retried), open and polled, and
 * open but idle because the host side is not connected (no client on QEMU's socket: before the agent
 * connects, after it disconnects, on the destination of a migration until the agent there connects).
 * While the host is away the port polls readable+hangup without pause, so it is left out of poll();
 * the driver sends SIGIO on every change of the host's state and on every arrival of data, so SIGIO is
 * what brings the port back. A slow timer rechecks only as a safety net (each recheck costs a TCG guest
 * measurably, ~1.5 % of a core at 2/s).
 *
 * The driver learns that the host connected from a control message (VIRTIO_CONSOLE_PORT_OPEN) that a
 * workqueue handles, while the host's first bytes are delivered straight from the interrupt. So a
 * command can be read while the driver still says "host not connected": a write then fails with
 * EAGAIN and poll() says POLLHUP, for a few milliseconds or, on a guest just migrated under TCG, much
 * longer. The host that sent the command is there; its PORT_OPEN is only late. Replies therefore go
 * through an output buffer that survives the host's absence for OUT_GRACE_MS: the late PORT_OPEN
 * raises SIGIO, the port comes back and the buffer is flushed. (Dropping the reply there, as this
 * tool once did, left a new host's first command unanswered; after a migration that race was lost
 * nearly every time.) A reply that outlives the grace is dropped: its host really left, and a new one
 * would ignore it anyway (its tag is not theirs).
 * The fd itself survives a migration (the device state moves with the guest); it is reopened after errors.
 */
static int ser_fd = -1;
static int ser_host_away;
static char ser_dev[300];
static char ser_buf[LINE_MAX_LEN];
static size_t ser_len;
static uint64_t ser_retry_at;
static volatile sig_atomic_t got_sigio;
/* Replies the host has not taken yet, in order; dropped when still here at ser_out_expires. */
static char ser_out[4 * OUT_MAX];
static size_t ser_out_len;
static uint64_t ser_out_expires;

#define HOST_AWAY_RECHECK_MS 5000
#define OUT_GRACE_MS 3000
#define REOPEN_MS 200

static void on_sigio(int sig) {
  (void)sig;
  got_sigio = 1;
}

/* Finds /dev/<vportXpY> whose sysfs name is PORT_NAME (no udev in the guest to make a by-name link). */
static int find_port(char *dev, size_t len) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (d == NULL) return -1;
  int found = -1;
  struct dirent *e;
  while (found != 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char p[300], name[128];
    snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    if (n <= 0) continue;
    name[n] = '\0';
    name[strcspn(name, "\n")] = '\0';
    if (strcmp(name, PORT_NAME) == 0) {
      snprintf(dev, len, "/dev/%s", e->d_name);
      found = 0;
    }
  }
  closedir(d);
  return found;
}

/* True when a virtio-serial device is bound to virtio_console, i.e. a named port may still appear. */
static int has_serial_device(void) {
  DIR *d = opendir("/sys/bus/virtio/drivers/virtio_console");
  if (d == NULL) return 0;
  int found = 0;
  struct dirent *e;
  while (!found && (e = readdir(d)) != NULL) found = strncmp(e->d_name, "virtio", 6) == 0;
  closedir(d);
  return found;
}

static void ser_open(void) {
  if (find_port(ser_dev, sizeof ser_dev) != 0) {
    ser_retry_at = mono_ms() + 1000;
    return;
  }
  ser_fd = open(ser_dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  ser_len = 0;
  ser_host_away = 0;
  if (ser_fd < 0) {
    ser_retry_at = mono_ms() + REOPEN_MS;
    return;
  }
  /* SIGIO tells us when the host connects (and when data arrives). */
  fcntl(ser_fd, F_SETOWN, getpid());
  fcntl(ser_fd, F_SETFL, fcntl(ser_fd, F_GETFL) | O_ASYNC);
}

/* The port failed: close it and open it again a little later. */
static void ser_reopen_later(void) {
  close(ser_fd);
  ser_fd = -1;
  ser_len = 0;
  ser_out_len = 0;
  ser_retry_at = mono_ms() + REOPEN_MS;
}

/* The host side is not connected (or its PORT_OPEN is late): a half line it sent is void; replies wait
 * in ser_out until it is back or their grace ends. */
static void ser_hangup(void) {
  ser_host_away = 1;
  ser_len = 0;
  ser_retry_at = mono_ms() + HOST_AWAY_RECHECK_MS;
}

/* Writes what the host has room for. EAGAIN leaves the rest for later: poll() then says POLLOUT once
 * there is room, or POLLHUP while the host is (still) not connected. Never waits. */
static void ser_flush(void) {
  while (ser_out_len > 0 && ser_fd >= 0) {
    ssize_t w = write(ser_fd, ser_out, ser_out_len);
    if (w > 0) {
      memmove(ser_out, ser_out + w, ser_out_len - (size_t)w);
      ser_out_len -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) return;
    ser_reopen_later();
    return;
  }
}

/* Queues a reply; one that does not fit (a host that stopped reading) is dropped whole, never cut. */
static void ser_queue(const char *s, size_t n) {
  if (ser_out_len == 0) ser_out_expires = mono_ms() + OUT_GRACE_MS;
  if (n > sizeof ser_out - ser_out_len) {
    logmsg("serial: host not reading, reply dropped");
    return;
  }
  memcpy(ser_out + ser_out_len, s, n);
  ser_out_len += n;
}

static void ser_readable(void) {
  for (;;) {
    ssize_t n = read(ser_fd, ser_buf + ser_len, sizeof ser_buf - 1 - ser_len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n == 0) { /* the host side is not connected */
      ser_hangup();
      return;
    }
    if (n < 0) {
      ser_reopen_later();
      return;
    }
    ser_len += (size_t)n;
    char *nl;
    while ((nl = memchr(ser_buf, '\n', ser_len)) != NULL) {
      *nl = '\0';
      char reply[OUT_MAX];
      handle(ser_buf, reply);
      size_t rl = strlen(reply);
      reply[rl++] = '\n';
      size_t rest = ser_len - (size_t)(nl + 1 - ser_buf);
      memmove(ser_buf, nl + 1, rest);
      ser_len = rest;
      ser_queue(reply, rl);
    }
    ser_flush();
    if (ser_fd < 0) return;
    if (ser_len == sizeof ser_buf - 1) ser_len = 0; /* a line too long to be a command: drop it */
  }
}

static void udp_open(void) {
  udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (udp_fd < 0) return;
  int one = 1;
  setsockopt(udp_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(UDP_PORT), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(udp_fd, (struct sockaddr *)&a, sizeof a) != 0) {
    logmsg("udp bind: %s", strerror(errno));
    close(udp_fd);
    udp_fd = -1;
  }
}

static void udp_readable(void) {
  char line[LINE_MAX_LEN + 1], reply[OUT_MAX];
  struct sockaddr_storage from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(udp_fd, line, LINE_MAX_LEN, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
  if (n < 0) return;
  line[n] = '\0';
  handle(line, reply);
  size_t rl = strlen(reply);
  reply[rl++] = '\n';
  sendto(udp_fd, reply, rl, MSG_DONTWAIT, (struct sockaddr *)&from, fl);
}

static void read_boot_id(void) {
  int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, boot_id, sizeof boot_id - 1);
  close(fd);
  if (n <= 0) {
    strcpy(boot_id, "unknown");
    return;
  }
  boot_id[n] = '\0';
  boot_id[strcspn(boot_id, "\n")] = '\0';
}

static void announce_ready(void) {
  char msg[128];
  int n = snprintf(msg, sizeof msg, "FERRY-GUEST READY boot_id=%s\n", boot_id);
  int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    fputs(msg, stdout);
    fflush(stdout);
    return;
  }
  if (write(fd, msg, (size_t)n) != n) logmsg("console write failed");
  close(fd);
}

static int serve(void) {
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_sigio};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGIO, &sa, NULL);
  /* SIGIO is blocked except inside ppoll(), so it can't slip in between a check and the wait; the
   * dirtier thread inherits the blocked mask and never sees it. */
  sigset_t block, waitmask;
  sigemptyset(&block);
  sigaddset(&block, SIGIO);
  sigprocmask(SIG_BLOCK, &block, &waitmask);
  sigdelset(&waitmask, SIGIO);

  read_boot_id();
  udp_open();
  /* The port's name arrives from QEMU shortly after virtio_console loads: wait a little for it, but a
   * VM without a guest channel must still report ready, and without delay. */
  for (int i = 0; i < 30 && ser_fd < 0 && has_serial_device(); i++) {
    ser_open();
    if (ser_fd < 0) sleep_ns(100000000ull);
  }
  if (ser_fd < 0) logmsg("no virtio-serial port named %s yet; will keep looking", PORT_NAME);
  announce_ready();
  for (;;) {
    uint64_t now = mono_ms();
    if (ser_fd < 0 && now >= ser_retry_at) ser_open();
    if (ser_fd >= 0 && ser_host_away && (got_sigio || now >= ser_retry_at)) {
      ser_host_away = 0;
      if (ser_out_len > 0 && now >= ser_out_expires) ser_out_len = 0; /* their host left for good */
    }
    got_sigio = 0;
    struct pollfd p[2];
    int np = 0, iu = -1, is = -1;
    if (udp_fd >= 0) {
      p[np] = (struct pollfd){.fd = udp_fd, .events = POLLIN};
      iu = np++;
    }
    if (ser_fd >= 0 && !ser_host_away) {
      p[np] = (struct pollfd){.fd = ser_fd, .events = (short)(POLLIN | (ser_out_len > 0 ? POLLOUT : 0))};
      is = np++;
    }
    struct timespec ts, *tsp = NULL;
    if (ser_fd < 0 || ser_host_away) {
      now = mono_ms();
      uint64_t ms = ser_retry_at > now ? ser_retry_at - now : 0;
      ts.tv_sec = (time_t)(ms / 1000);
      ts.tv_nsec = (long)(ms % 1000) * 1000000L;
      tsp = &ts;
    }
    int r = ppoll(p, (nfds_t)np, tsp, &waitmask);
    if (r < 0) {
      if (errno != EINTR) sleep_ns(10000000ull);
      continue;
    }
    if (iu >= 0 && (p[iu].revents & POLLIN)) udp_readable();
    if (is >= 0 && ser_fd >= 0 && !ser_host_away) {
      if (p[is].revents & POLLIN) ser_readable();
      else if (p[is].revents & POLLOUT) ser_flush();
      else if (p[is].revents & POLLHUP) ser_hangup();
      else if (p[is].revents & (POLLERR | POLLNVAL)) ser_reopen_later();
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "serve") == 0) return serve();
  if (argc >= 3 && strcmp(argv[1], "exec") == 0) {
    /* One command without channels, for debugging from the guest's shell. */
    char line[LINE_MAX_LEN] = "", reply[OUT_MAX];
    for (int i = 2; i < argc; i++) {
      strncat(line, argv[i], sizeof line - strlen(line) - 2);
      strcat(line, " ");
    }
    handle(line, reply);
    puts(reply);
    return 0;
  }
  fprintf(stderr, "usage: ferry-guest serve | ferry-guest exec COMMAND...\n");
  return 2;
}
