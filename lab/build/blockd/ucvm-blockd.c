/*
 * ucvm-blockd: the boot loader's lazy block client (docs/os-on-demand.md, "The block client").
 *
 *   ucvm-blockd get URL OUT [--header 'K: V']... [--retries N] [--max-bytes N]
 *   ucvm-blockd verify PUBKEY_FILE SIGNED_MANIFEST OUT_BODY
 *   ucvm-blockd serve --nbd /dev/nbdN COMMON
 *   ucvm-blockd cat --offset O --length L COMMON
 *   ucvm-blockd disconnect --nbd /dev/nbdN
 *   ucvm-blockd kexec KERNEL INITRD CMDLINE [--load-only]
 *   COMMON: --url URL_OF_IMG --size IMAGE_BYTES --block BLOCK_BYTES --hashes BLOCKS_FILE
 *           --cache DIR [--cache-max BYTES] [--header 'K: V']... [--retries N] [--name LABEL]
 *
 * Exit codes: 0 ok, 1 usage or local error, 2 server unreachable, 3 HTTP error status,
 * 4 verification failed. Every error is one line on stderr starting "ucvm-blockd: ".
 *
 * The program runs in the initramfs before any OS exists, so it depends on nothing but the
 * kernel: a numeric-IPv4 HTTP/1.1 client, libsodium (SHA-256, Ed25519) linked statically, and
 * the kernel's NBD ioctls and kexec_file_load(2). All buffers are allocated once at start, sized from the arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/major.h>
#include <linux/nbd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

enum exit_code {
    EXIT_OK = 0,
    EXIT_LOCAL = 1,
    EXIT_UNREACHABLE = 2,
    EXIT_HTTP = 3,
    EXIT_VERIFY = 4,
};

#define IO_TIMEOUT_S 10               /* connect / send / recv: a dead server never hangs us */
#define BACKOFF_CAP_S 16              /* back-off 1, 2, 4, 8, 16, 16, ... seconds */
#define DEFAULT_RETRIES 5
#define MAX_RETRIES 1000
#define MAX_HEADERS 16
#define MAX_HEADER_LEN 1024
#define MAX_URL_LEN 2048
#define HTTP_BUF_BYTES 16384          /* response head, and the staging area of `get` */
#define REQUEST_HEAD_BYTES (MAX_URL_LEN + MAX_HEADERS * (MAX_HEADER_LEN + 2) + 512)
#define MAX_MANIFEST_BYTES (1u << 20)
#define MAX_PUBKEY_BYTES 4096
#define MAX_SIG_LINE 512
#define MIN_BLOCK_BYTES 512u
#define MAX_BLOCK_BYTES (16u << 20)
#define BATCH_BYTES (4u << 20)        /* one Range request asks for at most this much */
#define CAT_CHUNK_BYTES (4u << 20)
/* The kernel's nbd driver caps a request at 65536 sectors of 512 bytes. */
#define NBD_REQ_MAX_BYTES (32u << 20)
#define NBD_DEV_BLOCK 4096u
#define NBD_CMD_MASK 0xffffu          /* the upper 16 bits of the request type are flags */
#define READY_WAIT_MS 10000
#define HASH_BYTES crypto_hash_sha256_BYTES
#define KEYID_BYTES 8
#define NIL UINT32_MAX
#if !defined(SYS_kexec_file_load) && defined(__x86_64__)
#define SYS_kexec_file_load 320
#endif
#ifndef RB_KEXEC
#define RB_KEXEC 0x45584543 /* LINUX_REBOOT_CMD_KEXEC */
#endif
#define KEXEC_CMDLINE_MAX 2048 /* x86's COMMAND_LINE_SIZE, with the terminating NUL */

/* ------------------------------------------------------------------------------------------ */
/* Logging and small helpers                                                                   */

/* One write per line, so lines from the two threads of `serve` never interleave. */
__attribute__((format(printf, 1, 2))) static void logmsg(const char *fmt, ...)
{
    char line[4096];
    int n = snprintf(line, sizeof line, "ucvm-blockd: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored; /* nowhere left to report a failing stderr */
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Digits only, no sign, no suffix, no overflow. */
static bool parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static ssize_t read_full(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static int write_full(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, (const char *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static ssize_t pread_full(int fd, void *buf, size_t len, off_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static int pwrite_full(int fd, const void *buf, size_t len, off_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

/* Reads a whole small file into buf (cap bytes at most). Returns 0 or EXIT_LOCAL, logged. */
static int read_small_file(const char *path, const char *what, char *buf, size_t cap, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        logmsg("cannot open %s %s: %s", what, path, strerror(errno));
        return EXIT_LOCAL;
    }
    ssize_t n = read_full(fd, buf, cap);
    int err = errno;
    char extra;
    bool more = n == (ssize_t)cap && read(fd, &extra, 1) > 0;
    close(fd);
    if (n < 0) {
        logmsg("cannot read %s %s: %s", what, path, strerror(err));
        return EXIT_LOCAL;
    }
    if (more) {
        logmsg("%s %s is larger than %zu bytes; is it the right file?", what, path, cap);
        return EXIT_LOCAL;
    }
    *len = (size_t)n;
    return EXIT_OK;
}

/* Writes PATH.tmp and renames it over PATH, so readers never see a half-written file. */
/* Written under NAME.tmp, then renamed, relative to DIRFD: the serving daemon keeps its cache
 * directory open, because after switch_root its path no longer leads there. */
static int write_file_atomic_at(int dirfd, const char *path, const void *data, size_t len,
                                bool log_errors)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        if (log_errors)
            logmsg("path too long: %s", path);
        return EXIT_LOCAL;
    }
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (log_errors)
            logmsg("cannot create %s: %s", tmp, strerror(errno));
        return EXIT_LOCAL;
    }
    int rc = write_full(fd, data, len);
    int err = errno;
    if (close(fd) != 0 && rc == 0) {
        rc = -1;
        err = errno;
    }
    if (rc == 0 && renameat(dirfd, tmp, dirfd, path) != 0) {
        rc = -1;
        err = errno;
    }
    if (rc != 0) {
        unlinkat(dirfd, tmp, 0);
        if (log_errors)
            logmsg("cannot write %s: %s", path, strerror(err));
        return EXIT_LOCAL;
    }
    return EXIT_OK;
}

static int write_file_atomic(const char *path, const void *data, size_t len, bool log_errors)
{
    return write_file_atomic_at(AT_FDCWD, path, data, len, log_errors);
}

static int mkdir_p(const char *dir)
{
    char path[PATH_MAX];
    if (dir[0] == '\0') {
        logmsg("the cache directory is an empty path");
        return EXIT_LOCAL;
    }
    if ((size_t)snprintf(path, sizeof path, "%s", dir) >= sizeof path) {
        logmsg("cache directory path too long: %s", dir);
        return EXIT_LOCAL;
    }
    for (char *p = path + 1;; p++) {
        bool last = *p == '\0';
        if (*p != '/' && !last)
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            logmsg("cannot create cache directory %s: %s", path, strerror(errno));
            return EXIT_LOCAL;
        }
        if (last)
            return EXIT_OK;
        *p = '/';
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Command line                                                                                */

enum opt_id {
    O_HEADER,
    O_RETRIES,
    O_NBD,
    O_URL,
    O_SIZE,
    O_BLOCK,
    O_HASHES,
    O_CACHE,
    O_CACHE_MAX,
    O_NAME,
    O_OFFSET,
    O_LENGTH,
    O_MAX_BYTES,
    O_METHOD,
    O_LOAD_ONLY,
    O_COUNT,
};

static const char *const opt_names[O_COUNT] = {
    "header", "retries", "nbd", "url", "size", "block",
    "hashes", "cache", "cache-max", "name", "offset", "length", "max-bytes", "method",
    "load-only",
};

#define BIT(o) (1u << (o))
#define OPTS_FLAGS BIT(O_LOAD_ONLY) /* options that take no value */
#define OPTS_COMMON                                                                            \
    (BIT(O_URL) | BIT(O_SIZE) | BIT(O_BLOCK) | BIT(O_HASHES) | BIT(O_CACHE) | BIT(O_CACHE_MAX) | \
     BIT(O_HEADER) | BIT(O_RETRIES) | BIT(O_NAME))
#define OPTS_REQUIRED_COMMON \
    (BIT(O_URL) | BIT(O_SIZE) | BIT(O_BLOCK) | BIT(O_HASHES) | BIT(O_CACHE))

struct command_spec {
    const char *name;
    unsigned allowed, required;
    int positionals;
    const char *usage;
};

struct options {
    const struct command_spec *cmd;
    const char *value[O_COUNT];
    const char *positional[3];
    int npositional;
    const char *headers[MAX_HEADERS];
    int nheaders;
    unsigned retries;
};

static const char *const USAGE =
    "usage:\n"
    "  ucvm-blockd get URL OUT [--header 'K: V']... [--retries N] [--max-bytes N]\n"
    "                  [--method GET|PUT]   (PUT sends an empty body: an IMDSv2 token)\n"
    "  ucvm-blockd verify PUBKEY_FILE SIGNED_MANIFEST OUT_BODY\n"
    "  ucvm-blockd serve --nbd /dev/nbdN COMMON\n"
    "  ucvm-blockd cat --offset O --length L COMMON\n"
    "  ucvm-blockd disconnect --nbd /dev/nbdN   (NBD_DISCONNECT, then NBD_CLEAR_SOCK)\n"
    "  ucvm-blockd kexec KERNEL INITRD CMDLINE [--load-only]\n"
    "                  (kexec_file_load, then reboot into it; --load-only: load, print\n"
    "                  `loaded` and exit)\n"
    "COMMON: --url URL_OF_IMG --size IMAGE_BYTES --block BLOCK_BYTES --hashes BLOCKS_FILE\n"
    "        --cache DIR [--cache-max BYTES] [--header 'K: V']... [--retries N] [--name LABEL]\n"
    "exit codes: 0 ok, 1 usage or local error, 2 server unreachable, 3 HTTP error status,\n"
    "            4 verification failed\n";

/* A header goes verbatim into the request, so it must be one well-formed line. */
static bool header_ok(const char *h)
{
    const char *colon = strchr(h, ':');
    if (colon == NULL || colon == h || strlen(h) > MAX_HEADER_LEN)
        return false;
    for (const char *p = h; p < colon; p++)
        if (*p <= ' ' || *p >= 0x7f)
            return false;
    for (const char *p = colon; *p; p++)
        if ((unsigned char)*p < ' ' || *p == 0x7f)
            return false;
    return true;
}

static int add_option(struct options *o, int id, const char *value)
{
    const char *cmd = o->cmd->name;
    if (id == O_HEADER) {
        if (o->nheaders == MAX_HEADERS) {
            logmsg("%s: at most %d --header options", cmd, MAX_HEADERS);
            return EXIT_LOCAL;
        }
        if (!header_ok(value)) {
            logmsg("%s: --header '%s' is not one 'Name: value' line", cmd, value);
            return EXIT_LOCAL;
        }
        o->headers[o->nheaders++] = value;
        return EXIT_OK;
    }
    if (o->value[id] != NULL) {
        logmsg("%s: --%s given twice", cmd, opt_names[id]);
        return EXIT_LOCAL;
    }
    o->value[id] = value;
    return EXIT_OK;
}

/* "--name value" or "--name=value". Returns the number of argv entries used, or -1. */
static int parse_one_option(struct options *o, int argc, char **argv, int i)
{
    const char *arg = argv[i] + 2;
    const char *eq = strchr(arg, '=');
    size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
    for (int id = 0; id < O_COUNT; id++) {
        if (strlen(opt_names[id]) != name_len || strncmp(arg, opt_names[id], name_len) != 0)
            continue;
        if (!(o->cmd->allowed & BIT(id)))
            break;
        if (OPTS_FLAGS & BIT(id)) {
            if (eq != NULL) {
                logmsg("%s: --%s takes no value", o->cmd->name, opt_names[id]);
                return -1;
            }
            return add_option(o, id, "") == EXIT_OK ? 1 : -1;
        }
        if (eq == NULL && i + 1 >= argc) {
            logmsg("%s: --%s needs a value (see ucvm-blockd --help)", o->cmd->name, opt_names[id]);
            return -1;
        }
        const char *value = eq ? eq + 1 : argv[i + 1];
        return add_option(o, id, value) == EXIT_OK ? (eq ? 1 : 2) : -1;
    }
    logmsg("%s: unknown option %s (see ucvm-blockd --help)", o->cmd->name, argv[i]);
    return -1;
}

static int check_required(struct options *o)
{
    if (o->npositional != o->cmd->positionals) {
        logmsg("%s: expected %d arguments, got %d (%s)", o->cmd->name, o->cmd->positionals,
               o->npositional, o->cmd->usage);
        return EXIT_LOCAL;
    }
    for (int id = 0; id < O_COUNT; id++) {
        if ((o->cmd->required & BIT(id)) && o->value[id] == NULL) {
            logmsg("%s: missing --%s (%s)", o->cmd->name, opt_names[id], o->cmd->usage);
            return EXIT_LOCAL;
        }
    }
    uint64_t retries = DEFAULT_RETRIES;
    const char *given = o->value[O_RETRIES];
    if (given && (!parse_u64(given, &retries) || retries > MAX_RETRIES)) {
        logmsg("%s: --retries '%s' is not a number from 0 to %d", o->cmd->name, given,
               MAX_RETRIES);
        return EXIT_LOCAL;
    }
    o->retries = (unsigned)retries;
    return EXIT_OK;
}

static int parse_args(const struct command_spec *cmd, int argc, char **argv, struct options *o)
{
    memset(o, 0, sizeof *o);
    o->cmd = cmd;
    for (int i = 0; i < argc;) {
        if (strncmp(argv[i], "--", 2) == 0 && argv[i][2] != '\0') {
            int used = parse_one_option(o, argc, argv, i);
            if (used < 0)
                return EXIT_LOCAL;
            i += used;
            continue;
        }
        if (o->npositional == 3) {
            logmsg("%s: unexpected argument '%s' (%s)", cmd->name, argv[i], cmd->usage);
            return EXIT_LOCAL;
        }
        o->positional[o->npositional++] = argv[i++];
    }
    return check_required(o);
}

static int option_u64(const struct options *o, int id, uint64_t fallback, uint64_t *out)
{
    if (o->value[id] == NULL) {
        *out = fallback;
        return EXIT_OK;
    }
    if (!parse_u64(o->value[id], out)) {
        logmsg("%s: --%s '%s' is not a number of bytes", o->cmd->name, opt_names[id],
               o->value[id]);
        return EXIT_LOCAL;
    }
    return EXIT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* URLs: http://A.B.C.D[:PORT]/path only. The boot loader has neither DNS nor TLS.              */

struct url {
    char text[MAX_URL_LEN + 1]; /* as given, for messages */
    char host[32];              /* the Host header: A.B.C.D or A.B.C.D:PORT */
    const char *path;           /* into text */
    struct sockaddr_in addr;
};

static int url_parse_authority(const char *given, const char *auth, size_t len, struct url *u)
{
    char host[INET_ADDRSTRLEN]; /* "255.255.255.255" at most */
    uint64_t port = 80;
    const char *colon = memchr(auth, ':', len);
    size_t host_len = colon ? (size_t)(colon - auth) : len;
    if (host_len == 0 || host_len >= sizeof host) {
        logmsg("URL %s: host is not a numeric IPv4 address (no DNS in the boot loader)", given);
        return EXIT_LOCAL;
    }
    memcpy(host, auth, host_len);
    host[host_len] = '\0';
    if (colon) {
        char port_text[8];
        size_t port_len = len - host_len - 1;
        if (port_len == 0 || port_len >= sizeof port_text)
            port = 0;
        else {
            memcpy(port_text, colon + 1, port_len);
            port_text[port_len] = '\0';
            if (!parse_u64(port_text, &port))
                port = 0;
        }
        if (port == 0 || port > 65535) {
            logmsg("URL %s: the port is not a number from 1 to 65535", given);
            return EXIT_LOCAL;
        }
    }
    memset(&u->addr, 0, sizeof u->addr);
    u->addr.sin_family = AF_INET;
    u->addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &u->addr.sin_addr) != 1) {
        logmsg("URL %s: host '%s' is not a numeric IPv4 address (no DNS in the boot loader)", given,
               host);
        return EXIT_LOCAL;
    }
    if (port == 80)
        snprintf(u->host, sizeof u->host, "%s", host);
    else
        snprintf(u->host, sizeof u->host, "%s:%u", host, (unsigned)port);
    return EXIT_OK;
}

static int url_parse(const char *given, struct url *u)
{
    static const char scheme[] = "http://";
    if (strlen(given) > MAX_URL_LEN) {
        logmsg("URL %.80s...: longer than %d characters", given, MAX_URL_LEN);
        return EXIT_LOCAL;
    }
    if (strncasecmp(given, "https://", 8) == 0) {
        logmsg("URL %s: https is not supported (the boot loader has no TLS); use http://", given);
        return EXIT_LOCAL;
    }
    if (strncasecmp(given, scheme, sizeof scheme - 1) != 0) {
        logmsg("URL %s: expected http://A.B.C.D[:PORT]/path", given);
        return EXIT_LOCAL;
    }
    snprintf(u->text, sizeof u->text, "%s", given);
    const char *auth = u->text + sizeof scheme - 1;
    const char *slash = strchr(auth, '/');
    size_t auth_len = slash ? (size_t)(slash - auth) : strlen(auth);
    if (url_parse_authority(given, auth, auth_len, u) != EXIT_OK)
        return EXIT_LOCAL;
    u->path = slash ? slash : "/";
    for (const char *p = u->path; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            logmsg("URL %s: the path contains a space or control character; percent-encode it",
                   given);
            return EXIT_LOCAL;
        }
    }
    return EXIT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* HTTP/1.1 client: one kept-alive connection, Content-Length bodies only.                     */

enum http_result {
    H_OK,
    H_TRANSIENT, /* connection failure, timeout, truncated body, 5xx: retry after a back-off */
    H_STALE,     /* a kept-alive connection the server had closed: reconnect at once */
    H_STATUS,    /* a definite HTTP error (status, or a response we cannot use): exit 3 */
    H_LOCAL,     /* a local failure, already logged: exit 1 */
};

struct http {
    struct url url;
    const char *method; /* GET, or PUT with an empty body */
    const char *const *headers;
    int nheaders;
    unsigned retries;
    int fd;             /* -1 when not connected */
    bool reused;        /* fd has already carried a complete response */
    size_t have, used;  /* buf[used..have) is received but not consumed */
    char why[512];      /* the last failure, for the final message */
    char buf[HTTP_BUF_BYTES];
};

struct range {
    bool on;
    uint64_t first, last; /* inclusive, as in the Range header */
};

/* Where a response body goes: a file (get) or memory (block ranges). */
struct sink {
    int fd;
    const char *path;
    uint64_t written;
    uint8_t *mem;
    uint64_t cap;
};

struct response {
    int status;
    bool http10, keep_alive, close, chunked;
    bool has_length, has_range;
    uint64_t length, range_first, range_last;
    char reason[64];
};

static void http_init(struct http *h, const struct options *o)
{
    h->method = o->value[O_METHOD] ? o->value[O_METHOD] : "GET";
    h->headers = o->headers;
    h->nheaders = o->nheaders;
    h->retries = o->retries;
    h->fd = -1;
    h->reused = false;
    h->have = h->used = 0;
}

static void http_close(struct http *h)
{
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    h->reused = false;
    h->have = h->used = 0;
}

__attribute__((format(printf, 2, 3))) static void http_why(struct http *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->why, sizeof h->why, fmt, ap);
    va_end(ap);
}

static int set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S, .tv_usec = 0};
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        return -1;
    /* Requests are one small segment: do not let Nagle hold them back. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

/* connect() with a timeout: non-blocking connect, then poll for writability. */
static int connect_timeout(int fd, const struct sockaddr_in *addr, char *why, size_t why_len)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        snprintf(why, why_len, "fcntl: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
        if (errno != EINPROGRESS) {
            snprintf(why, why_len, "connect: %s", strerror(errno));
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n;
        do
            n = poll(&p, 1, IO_TIMEOUT_S * 1000);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            snprintf(why, why_len, "connect: no answer within %d s", IO_TIMEOUT_S);
            return -1;
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            snprintf(why, why_len, "connect: %s", strerror(err ? err : errno));
            return -1;
        }
    }
    if (fcntl(fd, F_SETFL, flags) < 0) {
        snprintf(why, why_len, "fcntl: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static enum http_result http_connect(struct http *h)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        http_why(h, "socket: %s", strerror(errno));
        return H_TRANSIENT;
    }
    if (connect_timeout(fd, &h->url.addr, h->why, sizeof h->why) != 0 || set_timeouts(fd) != 0) {
        if (h->why[0] == '\0')
            http_why(h, "setsockopt: %s", strerror(errno));
        close(fd);
        return H_TRANSIENT;
    }
    h->fd = fd;
    h->reused = false;
    h->have = h->used = 0;
    return H_OK;
}

static bool append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static bool append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *len)
        return false;
    *len += (size_t)n;
    return true;
}

static enum http_result http_send_request(struct http *h, const struct range *rg, bool reused)
{
    char req[REQUEST_HEAD_BYTES];
    size_t len = 0;
    bool ok = append(req, sizeof req, &len,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ucvm-blockd\r\n", h->method,
                     h->url.path, h->url.host);
    if (strcmp(h->method, "PUT") == 0)
        ok = ok && append(req, sizeof req, &len, "Content-Length: 0\r\n");
    if (rg->on)
        ok = ok && append(req, sizeof req, &len, "Range: bytes=%" PRIu64 "-%" PRIu64 "\r\n",
                          rg->first, rg->last);
    for (int i = 0; i < h->nheaders; i++)
        ok = ok && append(req, sizeof req, &len, "%s\r\n", h->headers[i]);
    ok = ok && append(req, sizeof req, &len, "\r\n");
    if (!ok) {
        logmsg("%s: the request is too long", h->url.text);
        return H_LOCAL;
    }
    for (size_t done = 0; done < len;) {
        ssize_t n = send(h->fd, req + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            http_why(h, "send: %s", strerror(errno));
            return reused ? H_STALE : H_TRANSIENT;
        }
        done += (size_t)n;
    }
    return H_OK;
}

/* recv() into buf; 0 on EOF. The socket's SO_RCVTIMEO turns a silent server into EAGAIN. */
static ssize_t http_recv(struct http *h, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(h->fd, buf, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            http_why(h, "no data from the server within %d s", IO_TIMEOUT_S);
        else if (n < 0)
            http_why(h, "recv: %s", strerror(errno));
        return n;
    }
}

/* Reads until the blank line that ends the head. Returns the head's length (without it). */
static enum http_result http_read_head(struct http *h, bool reused, size_t *head_len)
{
    for (;;) {
        char *end = memmem(h->buf, h->have, "\r\n\r\n", 4);
        if (end != NULL) {
            *head_len = (size_t)(end - h->buf);
            h->used = *head_len + 4;
            return H_OK;
        }
        if (h->have == sizeof h->buf - 1) {
            http_why(h, "response head longer than %zu bytes", sizeof h->buf);
            return H_STATUS;
        }
        ssize_t n = http_recv(h, h->buf + h->have, sizeof h->buf - 1 - h->have);
        if (n == 0)
            http_why(h, "the server closed the connection without a complete response");
        if (n <= 0)
            return reused && h->have == 0 ? H_STALE : H_TRANSIENT;
        h->have += (size_t)n;
    }
}

static bool has_token(const char *value, const char *token)
{
    size_t tlen = strlen(token);
    for (const char *p = value; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ", \t");
        if (n == tlen && strncasecmp(p, token, tlen) == 0)
            return true;
        p += n;
    }
    return false;
}

/* "bytes A-B/TOTAL" (TOTAL may be '*'). A 416 sends "bytes *" then "/TOTAL": no range. */
static bool parse_content_range(const char *v, struct response *r)
{
    char first[24], last[24];
    if (strncasecmp(v, "bytes ", 6) != 0)
        return false;
    v += 6;
    if (v[0] == '*')
        return true;
    size_t a = strspn(v, "0123456789");
    if (a == 0 || a >= sizeof first || v[a] != '-')
        return false;
    memcpy(first, v, a);
    first[a] = '\0';
    v += a + 1;
    size_t b = strspn(v, "0123456789");
    if (b == 0 || b >= sizeof last || v[b] != '/')
        return false;
    memcpy(last, v, b);
    last[b] = '\0';
    r->has_range = parse_u64(first, &r->range_first) && parse_u64(last, &r->range_last);
    return r->has_range;
}

static bool parse_header_line(char *line, struct response *r)
{
    char *colon = strchr(line, ':');
    if (colon == NULL)
        return false;
    *colon = '\0';
    char *v = colon + 1;
    v += strspn(v, " \t");
    size_t vlen = strlen(v);
    while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
        v[--vlen] = '\0';
    if (strcasecmp(line, "Content-Length") == 0) {
        uint64_t n;
        if (!parse_u64(v, &n) || (r->has_length && n != r->length))
            return false;
        r->has_length = true;
        r->length = n;
    } else if (strcasecmp(line, "Connection") == 0) {
        r->close = r->close || has_token(v, "close");
        r->keep_alive = r->keep_alive || has_token(v, "keep-alive");
    } else if (strcasecmp(line, "Content-Range") == 0) {
        return parse_content_range(v, r);
    } else if (strcasecmp(line, "Transfer-Encoding") == 0) {
        r->chunked = true;
    }
    return true;
}

static bool parse_status_line(const char *line, struct response *r)
{
    if (strncmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') || line[8] != ' ')
        return false;
    r->http10 = line[7] == '0';
    const char *s = line + 9;
    if (s[0] < '1' || s[0] > '5' || s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9' ||
        (s[3] != ' ' && s[3] != '\0'))
        return false;
    r->status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    const char *reason = s[3] ? s + 4 : "";
    size_t i = 0;
    for (; reason[i] && i < sizeof r->reason - 1; i++)
        r->reason[i] = (reason[i] >= ' ' && reason[i] < 0x7f) ? reason[i] : '?';
    r->reason[i] = '\0';
    return true;
}

static enum http_result http_parse_head(struct http *h, size_t head_len, struct response *r)
{
    memset(r, 0, sizeof *r);
    h->buf[head_len] = '\0';
    char *save = NULL;
    char *line = strtok_r(h->buf, "\r\n", &save);
    if (line == NULL || !parse_status_line(line, r)) {
        http_why(h, "not an HTTP/1.x response");
        return H_STATUS;
    }
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
        if (!parse_header_line(line, r)) {
            http_why(h, "malformed response header '%.80s'", line);
            return H_STATUS;
        }
    }
    if (r->http10 && !r->keep_alive)
        r->close = true;
    return H_OK;
}

/* The status and the framing must be what the request needs; anything else is not usable. */
static enum http_result http_check_response(struct http *h, const struct range *rg,
                                            const struct response *r, const struct sink *sk)
{
    int want = rg->on ? 206 : 200;
    if (r->status >= 500) {
        http_why(h, "HTTP %d %s", r->status, r->reason);
        return H_TRANSIENT;
    }
    if (rg->on && r->status == 200) {
        http_why(h, "the server answered 200 to a Range request; it must answer 206");
        return H_STATUS;
    }
    if (r->status != want) {
        http_why(h, "HTTP %d %s", r->status, r->reason);
        return H_STATUS;
    }
    if (r->chunked || !r->has_length) {
        http_why(h, "the response has no Content-Length (chunked bodies are not supported)");
        return H_STATUS;
    }
    if (rg->on && (r->length != rg->last - rg->first + 1 ||
                   (r->has_range && (r->range_first != rg->first || r->range_last != rg->last)))) {
        http_why(h, "asked for bytes %" PRIu64 "-%" PRIu64 ", got %" PRIu64 " bytes (%" PRIu64
                    "-%" PRIu64 ")",
                 rg->first, rg->last, r->length, r->range_first, r->range_last);
        return H_STATUS;
    }
    if (r->length > sk->cap) {
        http_why(h, "the body has %" PRIu64 " bytes, more than the %" PRIu64 " expected",
                 r->length, sk->cap);
        return H_STATUS;
    }
    return H_OK;
}

static enum http_result sink_put(struct sink *sk, const void *data, size_t len)
{
    if (sk->mem != NULL) {
        memcpy(sk->mem + sk->written, data, len);
    } else if (pwrite_full(sk->fd, data, len, (off_t)sk->written) != 0) {
        logmsg("cannot write %s: %s", sk->path, strerror(errno));
        return H_LOCAL;
    }
    sk->written += len;
    return H_OK;
}

static enum http_result sink_reset(struct sink *sk)
{
    sk->written = 0;
    if (sk->mem == NULL && ftruncate(sk->fd, 0) != 0) {
        logmsg("cannot truncate %s: %s", sk->path, strerror(errno));
        return H_LOCAL;
    }
    return H_OK;
}

/* The body: first what came with the head, then straight from the socket. */
static enum http_result http_read_body(struct http *h, uint64_t length, struct sink *sk)
{
    size_t buffered = (size_t)min_u64(h->have - h->used, length);
    if (sink_put(sk, h->buf + h->used, buffered) != H_OK)
        return H_LOCAL;
    h->used += buffered;
    while (sk->written < length) {
        uint64_t want = length - sk->written;
        void *dst = sk->mem ? (void *)(sk->mem + sk->written) : (void *)h->buf;
        size_t room = (size_t)min_u64(want, sk->mem ? want : sizeof h->buf);
        ssize_t n = http_recv(h, dst, room);
        if (n <= 0) {
            if (n == 0)
                http_why(h, "the connection closed after %" PRIu64 " of %" PRIu64 " body bytes",
                         sk->written, length);
            return H_TRANSIENT;
        }
        if (sk->mem)
            sk->written += (uint64_t)n;
        else if (sink_put(sk, h->buf, (size_t)n) != H_OK)
            return H_LOCAL;
    }
    return H_OK;
}

/* One request and its response, on the kept-alive connection if there is one. */
static enum http_result http_try(struct http *h, const struct range *rg, struct sink *sk)
{
    if (h->fd >= 0 && h->have != h->used)
        http_close(h); /* leftover bytes: never reuse a confused connection */
    bool reused = h->fd >= 0 && h->reused;
    h->why[0] = '\0';
    if (h->fd < 0 && http_connect(h) != H_OK)
        return H_TRANSIENT;
    h->have = h->used = 0;
    enum http_result res = http_send_request(h, rg, reused);
    size_t head_len = 0;
    struct response r = {0};
    if (res == H_OK)
        res = http_read_head(h, reused, &head_len);
    if (res == H_OK)
        res = http_parse_head(h, head_len, &r);
    if (res == H_OK)
        res = http_check_response(h, rg, &r, sk);
    if (res == H_OK)
        res = http_read_body(h, r.length, sk);
    if (res != H_OK || r.close || h->have != h->used)
        http_close(h);
    else
        h->reused = true;
    return res;
}

static enum http_result http_exchange(struct http *h, const struct range *rg, struct sink *sk)
{
    if (sink_reset(sk) != H_OK)
        return H_LOCAL;
    enum http_result res = http_try(h, rg, sk);
    if (res != H_STALE)
        return res;
    /* The server closed the idle kept-alive connection: normal, so no back-off. */
    http_close(h);
    if (sink_reset(sk) != H_OK)
        return H_LOCAL;
    res = http_try(h, rg, sk);
    return res == H_STALE ? H_TRANSIENT : res;
}

static void describe_request(const struct http *h, const struct range *rg, char *out, size_t len)
{
    if (rg->on)
        snprintf(out, len, "%s (bytes %" PRIu64 "-%" PRIu64 ")", h->url.text, rg->first,
                 rg->last);
    else
        snprintf(out, len, "%s", h->url.text);
}

static void sleep_seconds(unsigned s)
{
    struct timespec t = {.tv_sec = s, .tv_nsec = 0};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

/* The request with retries and exponential back-off. Returns an exit code; failures logged. */
static int http_fetch(struct http *h, const struct range *rg, struct sink *sk)
{
    char what[MAX_URL_LEN + 64];
    describe_request(h, rg, what, sizeof what);
    unsigned attempts = h->retries + 1;
    unsigned delay = 1;
    for (unsigned attempt = 1;; attempt++) {
        enum http_result res = http_exchange(h, rg, sk);
        if (res == H_OK)
            return EXIT_OK;
        if (res == H_LOCAL)
            return EXIT_LOCAL;
        if (res == H_STATUS) {
            logmsg("%s: %s; check the URL and the repository server", what, h->why);
            return EXIT_HTTP;
        }
        if (attempt >= attempts) {
            logmsg("server unreachable: %s (%u attempts; last: %s); check the network and the "
                   "repository server",
                   what, attempts, h->why);
            return EXIT_UNREACHABLE;
        }
        logmsg("%s: %s; retrying in %u s (attempt %u of %u)", what, h->why, delay, attempt,
               attempts);
        sleep_seconds(delay);
        delay = delay * 2 > BACKOFF_CAP_S ? BACKOFF_CAP_S : delay * 2;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* get                                                                                         */

static const struct command_spec CMD_GET = {
    "get", BIT(O_HEADER) | BIT(O_RETRIES) | BIT(O_MAX_BYTES) | BIT(O_METHOD), 0, 2,
    "ucvm-blockd get URL OUT [--header 'K: V']... [--max-bytes N] [--method GET|PUT]"};

static int cmd_get(int argc, char **argv)
{
    static struct options o;
    static struct http h;
    int rc = parse_args(&CMD_GET, argc, argv, &o);
    if (rc != EXIT_OK)
        return rc;
    if (url_parse(o.positional[0], &h.url) != EXIT_OK)
        return EXIT_LOCAL;
    const char *method = o.value[O_METHOD];
    if (method && strcmp(method, "GET") != 0 && strcmp(method, "PUT") != 0) {
        logmsg("get: --method '%s' is not GET or PUT", method);
        return EXIT_LOCAL;
    }
    http_init(&h, &o);
    const char *out = o.positional[1];
    char part[PATH_MAX];
    if ((size_t)snprintf(part, sizeof part, "%s.part", out) >= sizeof part) {
        logmsg("get: output path too long: %s", out);
        return EXIT_LOCAL;
    }
    /* Into OUT.part, renamed once complete: a failed download never leaves a partial OUT. */
    int fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        logmsg("get: cannot create %s: %s", part, strerror(errno));
        return EXIT_LOCAL;
    }
    /* Nothing fetched is verified yet: a server may not fill the disk or RAM with it. */
    uint64_t max_bytes;
    if (option_u64(&o, O_MAX_BYTES, UINT64_MAX, &max_bytes) != EXIT_OK) {
        close(fd);
        unlink(part);
        return EXIT_LOCAL;
    }
    struct sink sk = {.fd = fd, .path = part, .cap = max_bytes};
    struct range none = {.on = false};
    rc = http_fetch(&h, &none, &sk);
    http_close(&h);
    if (close(fd) != 0 && rc == EXIT_OK) {
        logmsg("get: cannot write %s: %s", part, strerror(errno));
        rc = EXIT_LOCAL;
    }
    if (rc == EXIT_OK && rename(part, out) != 0) {
        logmsg("get: cannot rename %s to %s: %s", part, out, strerror(errno));
        rc = EXIT_LOCAL;
    }
    if (rc != EXIT_OK)
        unlink(part);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* verify                                                                                      */

static const struct command_spec CMD_VERIFY = {
    "verify", 0, 0, 3, "ucvm-blockd verify PUBKEY_FILE SIGNED_MANIFEST OUT_BODY"};

/* Splits "a b c" in place at single spaces. Returns the number of fields (at most max). */
static int split_fields(char *line, char **fields, int max)
{
    int n = 0;
    for (char *p = line; n < max;) {
        fields[n++] = p;
        p = strchr(p, ' ');
        if (p == NULL)
            return n;
        *p++ = '\0';
    }
    return max + 1; /* too many */
}

static void key_id(const uint8_t pk[crypto_sign_PUBLICKEYBYTES], char hex[2 * KEYID_BYTES + 1])
{
    uint8_t digest[HASH_BYTES];
    crypto_hash_sha256(digest, pk, crypto_sign_PUBLICKEYBYTES);
    sodium_bin2hex(hex, 2 * KEYID_BYTES + 1, digest, KEYID_BYTES);
}

/* Standard base64 of exactly `len` bytes, nothing else in the text. */
static bool base64_exact(const char *b64, uint8_t *out, size_t len)
{
    size_t got = 0;
    return sodium_base642bin(out, len, b64, strlen(b64), NULL, &got, NULL,
                             sodium_base64_VARIANT_ORIGINAL) == 0 &&
           got == len;
}

/* The key file: "ed25519 KEYID BASE64(raw public key)". */
static int read_public_key(const char *path, uint8_t pk[crypto_sign_PUBLICKEYBYTES],
                           char id[2 * KEYID_BYTES + 1])
{
    char text[MAX_PUBKEY_BYTES + 1];
    size_t len;
    if (read_small_file(path, "public key", text, MAX_PUBKEY_BYTES, &len) != EXIT_OK)
        return EXIT_LOCAL;
    text[len] = '\0';
    text[strcspn(text, "\r\n")] = '\0';
    char *f[3];
    if (split_fields(text, f, 3) != 3 || strcmp(f[0], "ed25519") != 0 ||
        !base64_exact(f[2], pk, crypto_sign_PUBLICKEYBYTES)) {
        logmsg("public key %s: expected one line 'ed25519 KEYID BASE64KEY'", path);
        return EXIT_LOCAL;
    }
    key_id(pk, id);
    if (strcasecmp(f[1], id) != 0) {
        logmsg("public key %s: its key id %.32s does not match the key (whose id is %s); the file "
               "is damaged",
               path, f[1], id);
        return EXIT_LOCAL;
    }
    return EXIT_OK;
}

static bool starts_with_signature(const char *p, const char *end)
{
    static const char tag[] = "signature ";
    return (size_t)(end - p) >= sizeof tag - 1 && memcmp(p, tag, sizeof tag - 1) == 0;
}

/* Finds the last line. Returns its start offset; the signed body is everything before it. */
static size_t last_line_start(const char *text, size_t len, size_t *line_len)
{
    size_t end = len > 0 && text[len - 1] == '\n' ? len - 1 : len;
    size_t start = end;
    while (start > 0 && text[start - 1] != '\n')
        start--;
    *line_len = end - start;
    return start;
}

static int check_signature_line(const char *path, char *line, const uint8_t *body,
                                size_t body_len, const uint8_t *pk, const char *pk_id)
{
    char *f[4];
    uint8_t sig[crypto_sign_BYTES];
    if (split_fields(line, f, 4) != 4 || strcmp(f[1], "ed25519") != 0) {
        logmsg("%s: manifest signature invalid: expected 'signature ed25519 KEYID BASE64SIG'",
               path);
        return EXIT_VERIFY;
    }
    if (strcasecmp(f[2], pk_id) != 0) {
        logmsg("%s: manifest signed by key %.32s, expected %s; refusing it", path, f[2], pk_id);
        return EXIT_VERIFY;
    }
    if (!base64_exact(f[3], sig, sizeof sig) ||
        crypto_sign_verify_detached(sig, body, body_len, pk) != 0) {
        logmsg("%s: manifest signature invalid; refusing it", path);
        return EXIT_VERIFY;
    }
    return EXIT_OK;
}

static int verify_manifest(const char *path, const char *text, size_t len, const uint8_t *pk,
                           const char *pk_id, size_t *body_len)
{
    size_t line_len;
    size_t start = last_line_start(text, len, &line_len);
    if (!starts_with_signature(text + start, text + start + line_len)) {
        bool elsewhere = starts_with_signature(text, text + len) ||
                         memmem(text, len, "\nsignature ", 11) != NULL;
        if (elsewhere)
            logmsg("%s: manifest signature invalid: the signature line is not the last line",
                   path);
        else
            logmsg("%s: manifest is not signed (no 'signature' line); refusing it", path);
        return EXIT_VERIFY;
    }
    if (line_len >= MAX_SIG_LINE || memchr(text + start, '\0', line_len) != NULL) {
        logmsg("%s: manifest signature invalid: malformed signature line", path);
        return EXIT_VERIFY;
    }
    char line[MAX_SIG_LINE];
    memcpy(line, text + start, line_len);
    line[line_len] = '\0';
    *body_len = start;
    return check_signature_line(path, line, (const uint8_t *)text, start, pk, pk_id);
}

static int cmd_verify(int argc, char **argv)
{
    static struct options o;
    static char manifest[MAX_MANIFEST_BYTES];
    int rc = parse_args(&CMD_VERIFY, argc, argv, &o);
    if (rc != EXIT_OK)
        return rc;
    uint8_t pk[crypto_sign_PUBLICKEYBYTES];
    char pk_id[2 * KEYID_BYTES + 1];
    if (read_public_key(o.positional[0], pk, pk_id) != EXIT_OK)
        return EXIT_LOCAL;
    size_t len, body_len = 0;
    if (read_small_file(o.positional[1], "manifest", manifest, sizeof manifest, &len) != EXIT_OK)
        return EXIT_LOCAL;
    rc = verify_manifest(o.positional[1], manifest, len, pk, pk_id, &body_len);
    if (rc != EXIT_OK)
        return rc;
    return write_file_atomic(o.positional[2], manifest, body_len, true);
}

/* ------------------------------------------------------------------------------------------ */
/* The image, its block hashes and the persistent cache                                        */

struct stats {
    uint64_t cached_bytes;    /* bytes of the blocks present in the cache now */
    uint64_t fetched_bytes;   /* block bytes received from the server by this process */
    uint64_t evicted_blocks;  /* blocks evicted to stay under --cache-max or on ENOSPC */
    uint64_t verify_failures; /* hash checks failed, by blocks from the server or the cache */
};

struct cache {
    char dir[PATH_MAX - 16];
    int dir_fd, data_fd, map_fd;
    uint64_t max_bytes;
    uint8_t *map;         /* the `map` file, in memory */
    uint32_t *prev, *next; /* LRU list of the present blocks: head most, tail least recent */
    uint32_t head, tail;
    struct stats st;
    bool dirty;           /* stats changed since the `stats` file was written */
    bool warned_punch, warned_write, warned_map, warned_stats;
};

struct image {
    uint64_t size, block;
    uint32_t nblocks;
    const char *name;     /* for messages: --name, else the URL */
    uint8_t *hashes;      /* nblocks × 32 bytes */
    struct http http;
    struct cache cache;
    uint8_t *batch;       /* the blocks of one Range request */
    uint32_t batch_blocks;
    uint8_t *blockbuf;    /* one block read back from the cache */
};

static uint64_t block_off(const struct image *im, uint32_t b)
{
    return (uint64_t)b * im->block;
}

static uint64_t block_len(const struct image *im, uint32_t b)
{
    return min_u64(im->block, im->size - block_off(im, b));
}

static bool block_ok(const struct image *im, uint32_t b, const uint8_t *data)
{
    uint8_t digest[HASH_BYTES];
    crypto_hash_sha256(digest, data, block_len(im, b));
    return memcmp(digest, im->hashes + (size_t)b * HASH_BYTES, HASH_BYTES) == 0;
}

/* --- LRU: an intrusive doubly linked list over block numbers, O(1) per operation. --- */

static void lru_unlink(struct cache *c, uint32_t b)
{
    if (c->prev[b] != NIL)
        c->next[c->prev[b]] = c->next[b];
    else
        c->head = c->next[b];
    if (c->next[b] != NIL)
        c->prev[c->next[b]] = c->prev[b];
    else
        c->tail = c->prev[b];
    c->prev[b] = c->next[b] = NIL;
}

static void lru_push_front(struct cache *c, uint32_t b)
{
    c->prev[b] = NIL;
    c->next[b] = c->head;
    if (c->head != NIL)
        c->prev[c->head] = b;
    c->head = b;
    if (c->tail == NIL)
        c->tail = b;
}

static void lru_touch(struct cache *c, uint32_t b)
{
    lru_unlink(c, b);
    lru_push_front(c, b);
}

/* --- stats --- */

static void stats_flush(struct image *im)
{
    struct cache *c = &im->cache;
    if (!c->dirty)
        return;
    char text[256];
    int n = snprintf(text, sizeof text,
                     "cached_bytes %" PRIu64 "\nfetched_bytes %" PRIu64
                     "\nevicted_blocks %" PRIu64 "\nverify_failures %" PRIu64 "\n",
                     c->st.cached_bytes, c->st.fetched_bytes, c->st.evicted_blocks,
                     c->st.verify_failures);
    /* Logged once: serving blocks matters more than the stats. */
    if (write_file_atomic_at(c->dir_fd, "stats", text, (size_t)n, !c->warned_stats) != EXIT_OK) {
        c->warned_stats = true;
        return;
    }
    c->dirty = false;
}

/* --- the map file and holes --- */

static void map_write(struct image *im, uint32_t b, uint8_t v)
{
    struct cache *c = &im->cache;
    if (pwrite_full(c->map_fd, &v, 1, (off_t)b) != 0 && !c->warned_map) {
        /* Harmless: a block marked present but missing fails its check and is refetched. */
        c->warned_map = true;
        logmsg("cannot update %s/map: %s; the cache may refetch blocks", c->dir, strerror(errno));
    }
}

static void punch_hole(struct image *im, uint32_t b)
{
    struct cache *c = &im->cache;
    int mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (fallocate(c->data_fd, mode, (off_t)block_off(im, b), (off_t)block_len(im, b)) != 0 &&
        !c->warned_punch) {
        c->warned_punch = true;
        logmsg("cannot punch holes in %s/data (%s): evicted blocks keep their disk space", c->dir,
               strerror(errno));
    }
}

/* Removes block b from the cache: the map first, so a crash never leaves a "present" hole. */
static void cache_forget(struct image *im, uint32_t b)
{
    struct cache *c = &im->cache;
    c->map[b] = 0;
    map_write(im, b, 0);
    punch_hole(im, b);
    lru_unlink(c, b);
    c->st.cached_bytes -= block_len(im, b);
    c->dirty = true;
}

static bool cache_evict_lru(struct image *im)
{
    struct cache *c = &im->cache;
    if (c->tail == NIL)
        return false;
    cache_forget(im, c->tail);
    c->st.evicted_blocks++;
    return true;
}

/* Writes block b; on ENOSPC evicts and retries. Failing that, the block is served uncached. */
static void cache_store(struct image *im, uint32_t b, const uint8_t *data)
{
    struct cache *c = &im->cache;
    uint64_t len = block_len(im, b);
    if (len > c->max_bytes)
        return;
    while (c->st.cached_bytes + len > c->max_bytes)
        if (!cache_evict_lru(im))
            return;
    while (pwrite_full(c->data_fd, data, len, (off_t)block_off(im, b)) != 0) {
        int err = errno;
        punch_hole(im, b); /* give back what a partial write took */
        bool full = err == ENOSPC || err == EDQUOT;
        if (full && cache_evict_lru(im))
            continue;
        if (!c->warned_write) {
            c->warned_write = true;
            logmsg("cannot write block %u to %s/data (%s); serving blocks uncached", b, c->dir,
                   strerror(err));
        }
        return;
    }
    map_write(im, b, 1);
    c->map[b] = 1;
    lru_push_front(c, b);
    c->st.cached_bytes += len;
    c->dirty = true;
}

/* True when block b is in the cache and still matches its hash; a bad block is dropped. */
static bool cache_load(struct image *im, uint32_t b, uint8_t *dst)
{
    struct cache *c = &im->cache;
    if (!c->map[b])
        return false;
    uint64_t len = block_len(im, b);
    ssize_t n = pread_full(c->data_fd, dst, len, (off_t)block_off(im, b));
    if (n != (ssize_t)len) {
        logmsg("cannot read block %u from %s/data (%s); fetching it again", b, c->dir,
               n < 0 ? strerror(errno) : "short read");
        cache_forget(im, b);
        return false;
    }
    if (!block_ok(im, b, dst)) {
        c->st.verify_failures++;
        logmsg("cached block %u of %s failed verification (sha256 mismatch); dropped it, "
               "fetching it again",
               b, im->name);
        cache_forget(im, b);
        return false;
    }
    lru_touch(c, b);
    return true;
}

/* --- opening the cache --- */

static int cache_open_file(struct cache *c, const char *name, int *fd)
{
    *fd = openat(c->dir_fd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0) {
        logmsg("cannot open %s/%s: %s", c->dir, name, strerror(errno));
        return EXIT_LOCAL;
    }
    return EXIT_OK;
}

/* A cache whose files do not fit this image's size starts empty (sparse, all holes). */
static int cache_reset_if_foreign(struct image *im)
{
    struct cache *c = &im->cache;
    struct stat map_st, data_st;
    if (fstat(c->map_fd, &map_st) != 0 || fstat(c->data_fd, &data_st) != 0) {
        logmsg("cannot stat the files of cache %s: %s", c->dir, strerror(errno));
        return EXIT_LOCAL;
    }
    if ((uint64_t)map_st.st_size == im->nblocks && (uint64_t)data_st.st_size == im->size)
        return EXIT_OK;
    if (map_st.st_size != 0 || data_st.st_size != 0)
        logmsg("cache %s was made for an image of another size; starting it empty", c->dir);
    if (ftruncate(c->data_fd, 0) != 0 || ftruncate(c->data_fd, (off_t)im->size) != 0 ||
        ftruncate(c->map_fd, 0) != 0 || ftruncate(c->map_fd, (off_t)im->nblocks) != 0) {
        logmsg("cannot size the files of cache %s: %s", c->dir, strerror(errno));
        return EXIT_LOCAL;
    }
    return EXIT_OK;
}

static int cache_load_map(struct image *im)
{
    struct cache *c = &im->cache;
    if (pread_full(c->map_fd, c->map, im->nblocks, 0) != (ssize_t)im->nblocks) {
        logmsg("cannot read %s/map: %s", c->dir, strerror(errno));
        return EXIT_LOCAL;
    }
    c->head = c->tail = NIL;
    for (uint32_t b = 0; b < im->nblocks; b++) {
        c->prev[b] = c->next[b] = NIL;
        if (c->map[b] != 1) {
            c->map[b] = 0;
            continue;
        }
        lru_push_front(c, b); /* no use history across runs: higher blocks count as newer */
        c->st.cached_bytes += block_len(im, b);
    }
    return EXIT_OK;
}

static int cache_open(struct image *im, const char *dir, uint64_t max_bytes)
{
    struct cache *c = &im->cache;
    if ((size_t)snprintf(c->dir, sizeof c->dir, "%s", dir) >= sizeof c->dir) {
        logmsg("cache directory path too long: %s", dir);
        return EXIT_LOCAL;
    }
    c->max_bytes = max_bytes;
    c->dir_fd = c->data_fd = c->map_fd = -1;
    if (mkdir_p(dir) != EXIT_OK)
        return EXIT_LOCAL;
    c->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c->dir_fd < 0) {
        logmsg("cannot open the cache directory %s: %s", dir, strerror(errno));
        return EXIT_LOCAL;
    }
    if (cache_open_file(c, "data", &c->data_fd) != EXIT_OK ||
        cache_open_file(c, "map", &c->map_fd) != EXIT_OK)
        return EXIT_LOCAL;
    /* Two clients writing one cache would corrupt each other's map. */
    if (flock(c->map_fd, LOCK_EX | LOCK_NB) != 0) {
        logmsg("cache %s is in use by another ucvm-blockd (%s); give each its own --cache", dir,
               strerror(errno));
        return EXIT_LOCAL;
    }
    if (cache_reset_if_foreign(im) != EXIT_OK || cache_load_map(im) != EXIT_OK)
        return EXIT_LOCAL;
    while (c->st.cached_bytes > c->max_bytes && cache_evict_lru(im))
        ; /* --cache-max was lowered since the last run */
    c->dirty = true;
    stats_flush(im);
    return EXIT_OK;
}

/* --- the image --- */

static int image_check_geometry(struct image *im, const struct options *o)
{
    const char *cmd = o->cmd->name;
    if (option_u64(o, O_SIZE, 0, &im->size) != EXIT_OK ||
        option_u64(o, O_BLOCK, 0, &im->block) != EXIT_OK)
        return EXIT_LOCAL;
    if (im->size == 0 || im->size > (UINT64_C(1) << 50)) {
        logmsg("%s: --size %s is not a plausible image size", cmd, o->value[O_SIZE]);
        return EXIT_LOCAL;
    }
    if (im->block < MIN_BLOCK_BYTES || im->block > MAX_BLOCK_BYTES) {
        logmsg("%s: --block %s must be from %u to %u bytes", cmd, o->value[O_BLOCK],
               MIN_BLOCK_BYTES, MAX_BLOCK_BYTES);
        return EXIT_LOCAL;
    }
    uint64_t nblocks = (im->size + im->block - 1) / im->block;
    if (nblocks >= NIL) {
        logmsg("%s: --size / --block gives too many blocks; use bigger blocks", cmd);
        return EXIT_LOCAL;
    }
    im->nblocks = (uint32_t)nblocks;
    return EXIT_OK;
}

static int image_read_hashes(struct image *im, const char *path)
{
    uint64_t want = (uint64_t)im->nblocks * HASH_BYTES;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        logmsg("cannot open hashes file %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return EXIT_LOCAL;
    }
    if ((uint64_t)st.st_size != want) {
        logmsg("hashes file %s has %lld bytes, expected %" PRIu64 " (32 for each of the %u "
               "blocks of %" PRIu64 " bytes); check --size and --block",
               path, (long long)st.st_size, want, im->nblocks, im->block);
        close(fd);
        return EXIT_LOCAL;
    }
    ssize_t n = pread_full(fd, im->hashes, want, 0);
    int err = errno;
    close(fd);
    if (n != (ssize_t)want) {
        logmsg("cannot read hashes file %s: %s", path, n < 0 ? strerror(err) : "short read");
        return EXIT_LOCAL;
    }
    return EXIT_OK;
}

static void *alloc_or_log(size_t n, const char *what)
{
    void *p = calloc(1, n);
    if (p == NULL)
        logmsg("out of memory: %zu bytes for %s", n, what);
    return p;
}

static int image_alloc(struct image *im)
{
    struct cache *c = &im->cache;
    im->batch_blocks = (uint32_t)max_u64(1, BATCH_BYTES / im->block);
    im->hashes = alloc_or_log((size_t)im->nblocks * HASH_BYTES, "the block hashes");
    c->map = im->hashes ? alloc_or_log(im->nblocks, "the cache map") : NULL;
    c->prev = c->map ? alloc_or_log((size_t)im->nblocks * sizeof(uint32_t), "the LRU") : NULL;
    c->next = c->prev ? alloc_or_log((size_t)im->nblocks * sizeof(uint32_t), "the LRU") : NULL;
    im->batch =
        c->next ? alloc_or_log((size_t)im->batch_blocks * im->block, "the fetch buffer") : NULL;
    im->blockbuf = im->batch ? alloc_or_log(im->block, "the block buffer") : NULL;
    return im->blockbuf ? EXIT_OK : EXIT_LOCAL;
}

static int image_open(struct image *im, const struct options *o)
{
    uint64_t cache_max;
    if (url_parse(o->value[O_URL], &im->http.url) != EXIT_OK ||
        image_check_geometry(im, o) != EXIT_OK ||
        option_u64(o, O_CACHE_MAX, UINT64_MAX, &cache_max) != EXIT_OK)
        return EXIT_LOCAL;
    http_init(&im->http, o);
    im->name = o->value[O_NAME] ? o->value[O_NAME] : im->http.url.text;
    if (image_alloc(im) != EXIT_OK || image_read_hashes(im, o->value[O_HASHES]) != EXIT_OK)
        return EXIT_LOCAL;
    return cache_open(im, o->value[O_CACHE], cache_max);
}

/* --- reading --- */

/* Copies the part of block b (whose bytes are src) that falls in [off, off+len). */
static void copy_slice(const struct image *im, uint32_t b, const uint8_t *src, uint64_t off,
                       uint64_t len, uint8_t *dst)
{
    uint64_t bstart = block_off(im, b), bend = bstart + block_len(im, b);
    uint64_t s = max_u64(bstart, off), e = min_u64(bend, off + len);
    memcpy(dst + (s - off), src + (s - bstart), e - s);
}

static int fetch_into(struct image *im, uint32_t first, uint32_t last, uint8_t *dst)
{
    uint64_t start = block_off(im, first);
    uint64_t bytes = block_off(im, last) + block_len(im, last) - start;
    struct range rg = {.on = true, .first = start, .last = start + bytes - 1};
    struct sink sk = {.fd = -1, .mem = dst, .cap = bytes};
    int rc = http_fetch(&im->http, &rg, &sk);
    if (rc == EXIT_OK) {
        im->cache.st.fetched_bytes += bytes;
        im->cache.dirty = true;
    }
    return rc;
}

/* A fetched block that fails its hash gets one more chance; then the read fails. */
static int refetch_block(struct image *im, uint32_t b, uint8_t *dst)
{
    im->cache.st.verify_failures++;
    im->cache.dirty = true;
    logmsg("block %u of %s failed verification (sha256 mismatch); fetching it again", b,
           im->name);
    int rc = fetch_into(im, b, b, dst);
    if (rc != EXIT_OK)
        return rc;
    if (block_ok(im, b, dst))
        return EXIT_OK;
    im->cache.st.verify_failures++;
    logmsg("block %u of %s failed verification (sha256 mismatch); refusing it", b, im->name);
    return EXIT_VERIFY;
}

/* Fetches blocks first..last (all missing) with one Range request, verifies and caches them. */
static int fetch_run(struct image *im, uint32_t first, uint32_t last)
{
    int rc = fetch_into(im, first, last, im->batch);
    for (uint32_t b = first; rc == EXIT_OK && b <= last; b++) {
        uint8_t *data = im->batch + (size_t)(b - first) * im->block;
        if (!block_ok(im, b, data))
            rc = refetch_block(im, b, data);
        if (rc == EXIT_OK)
            cache_store(im, b, data);
    }
    stats_flush(im);
    return rc;
}

/* The longest run of missing blocks from b (at most one batch, never past last). */
static uint32_t missing_run_end(const struct image *im, uint32_t b, uint32_t last)
{
    uint32_t end = b;
    while (end < last && end - b + 1 < im->batch_blocks && !im->cache.map[end + 1])
        end++;
    return end;
}

/* Reads [off, off+len) of the image (inside it) into dst. Returns an exit code. */
static int image_read(struct image *im, uint64_t off, uint64_t len, uint8_t *dst)
{
    if (len == 0)
        return EXIT_OK;
    uint32_t b = (uint32_t)(off / im->block);
    uint32_t last = (uint32_t)((off + len - 1) / im->block);
    int rc = EXIT_OK;
    while (rc == EXIT_OK && b <= last) {
        if (cache_load(im, b, im->blockbuf)) {
            copy_slice(im, b, im->blockbuf, off, len, dst);
            b++;
            continue;
        }
        uint32_t end = missing_run_end(im, b, last);
        rc = fetch_run(im, b, end);
        for (uint32_t i = b; rc == EXIT_OK && i <= end; i++)
            copy_slice(im, i, im->batch + (size_t)(i - b) * im->block, off, len, dst);
        b = end + 1;
    }
    stats_flush(im);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* cat                                                                                         */

static const struct command_spec CMD_CAT = {
    "cat", OPTS_COMMON | BIT(O_OFFSET) | BIT(O_LENGTH),
    OPTS_REQUIRED_COMMON | BIT(O_OFFSET) | BIT(O_LENGTH), 0,
    "ucvm-blockd cat --offset O --length L --url URL --size N --block N --hashes F --cache DIR"};

static int cmd_cat(int argc, char **argv)
{
    static struct options o;
    static struct image im;
    int rc = parse_args(&CMD_CAT, argc, argv, &o);
    uint64_t off = 0, len = 0;
    if (rc != EXIT_OK || option_u64(&o, O_OFFSET, 0, &off) != EXIT_OK ||
        option_u64(&o, O_LENGTH, 0, &len) != EXIT_OK || image_open(&im, &o) != EXIT_OK)
        return EXIT_LOCAL;
    if (off > im.size || len > im.size - off) {
        logmsg("cat: --offset %" PRIu64 " --length %" PRIu64 " reaches past the end of the "
               "image (%" PRIu64 " bytes)",
               off, len, im.size);
        return EXIT_LOCAL;
    }
    uint8_t *buf = alloc_or_log(CAT_CHUNK_BYTES, "the output buffer");
    if (buf == NULL)
        return EXIT_LOCAL;
    while (rc == EXIT_OK && len > 0) {
        uint64_t n = min_u64(len, CAT_CHUNK_BYTES);
        rc = image_read(&im, off, n, buf);
        if (rc == EXIT_OK && write_full(STDOUT_FILENO, buf, n) != 0) {
            logmsg("cat: cannot write to stdout: %s", strerror(errno));
            rc = EXIT_LOCAL;
        }
        off += n;
        len -= n;
    }
    http_close(&im.http);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* serve: the kernel's nbd client talks to us over a socketpair                                */

static const struct command_spec CMD_SERVE = {
    "serve", OPTS_COMMON | BIT(O_NBD), OPTS_REQUIRED_COMMON | BIT(O_NBD), 0,
    "ucvm-blockd serve --nbd /dev/nbdN --url URL --size N --block N --hashes F --cache DIR"};

struct nbd_session {
    const char *dev;
    int nbd_fd;
    dev_t rdev;
    uint64_t dev_bytes;     /* the image size rounded up to NBD_DEV_BLOCK */
    int ready_fd;           /* pipe to the waiting parent; -1 once it has its answer */
    bool do_it_returned;
    pthread_mutex_t lock;
};

static int nbd_ioctl(struct nbd_session *s, unsigned long req, unsigned long arg, const char *name)
{
    if (ioctl(s->nbd_fd, req, arg) == 0)
        return EXIT_OK;
    if (errno == EBUSY)
        logmsg("%s is already in use (%s: EBUSY); disconnect it or pick another /dev/nbdN", s->dev,
               name);
    else
        logmsg("%s: ioctl %s failed: %s", s->dev, name, strerror(errno));
    return EXIT_LOCAL;
}

/* Opens the device and hands one end of a socketpair to the kernel. */
static int nbd_setup(struct nbd_session *s, uint64_t image_bytes, int *sock)
{
    struct stat st;
    int sv[2];
    s->nbd_fd = open(s->dev, O_RDWR | O_CLOEXEC);
    if (s->nbd_fd < 0) {
        logmsg("cannot open %s: %s; is the nbd module loaded (modprobe nbd)?", s->dev,
               strerror(errno));
        return EXIT_LOCAL;
    }
    if (fstat(s->nbd_fd, &st) != 0 || !S_ISBLK(st.st_mode)) {
        logmsg("%s is not a block device", s->dev);
        return EXIT_LOCAL;
    }
    s->rdev = st.st_rdev;
    s->dev_bytes = (image_bytes + NBD_DEV_BLOCK - 1) / NBD_DEV_BLOCK * NBD_DEV_BLOCK;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        logmsg("socketpair: %s", strerror(errno));
        return EXIT_LOCAL;
    }
    if (nbd_ioctl(s, NBD_SET_BLKSIZE, NBD_DEV_BLOCK, "NBD_SET_BLKSIZE") != EXIT_OK ||
        nbd_ioctl(s, NBD_SET_SIZE_BLOCKS, s->dev_bytes / NBD_DEV_BLOCK, "NBD_SET_SIZE_BLOCKS") !=
            EXIT_OK ||
        nbd_ioctl(s, NBD_SET_FLAGS, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY, "NBD_SET_FLAGS") !=
            EXIT_OK ||
        nbd_ioctl(s, NBD_SET_SOCK, (unsigned long)sv[1], "NBD_SET_SOCK") != EXIT_OK)
        return EXIT_LOCAL;
    close(sv[1]); /* the kernel holds its own reference now */
    *sock = sv[0];
    return EXIT_OK;
}

/* Tells the parent, once, whether the device is ready ('R') or not ('F'). */
static void announce(struct nbd_session *s, char verdict)
{
    pthread_mutex_lock(&s->lock);
    if (s->ready_fd >= 0) {
        if (write_full(s->ready_fd, &verdict, 1) != 0)
            logmsg("cannot tell the parent process that %s is ready: %s", s->dev, strerror(errno));
        close(s->ready_fd);
        s->ready_fd = -1;
    }
    pthread_mutex_unlock(&s->lock);
}

static bool do_it_returned(struct nbd_session *s)
{
    pthread_mutex_lock(&s->lock);
    bool done = s->do_it_returned;
    pthread_mutex_unlock(&s->lock);
    return done;
}

/* NBD_DO_IT runs the kernel side of the device and blocks until it is disconnected. */
static void *do_it_thread(void *arg)
{
    struct nbd_session *s = arg;
    int rc = ioctl(s->nbd_fd, NBD_DO_IT);
    int err = errno;
    pthread_mutex_lock(&s->lock);
    s->do_it_returned = true;
    bool before_ready = s->ready_fd >= 0;
    pthread_mutex_unlock(&s->lock);
    if (rc != 0 && before_ready)
        logmsg("%s: NBD_DO_IT failed: %s", s->dev, strerror(err));
    announce(s, 'F');
    /* Releases the kernel's socket, so the serving loop sees end of file and exits. */
    (void)ioctl(s->nbd_fd, NBD_CLEAR_QUE);
    (void)ioctl(s->nbd_fd, NBD_CLEAR_SOCK);
    return NULL;
}

/*
 * The kernel creates /sys/dev/block/MAJ:MIN/pid when NBD_DO_IT has started the device, which
 * is the moment /init may mount it. Without sysfs we can only wait a little and hope.
 */
static void *ready_thread(void *arg)
{
    struct nbd_session *s = arg;
    char path[64];
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/pid", major(s->rdev), minor(s->rdev));
    bool sysfs = access("/sys/dev/block", F_OK) == 0;
    int wait_ms = sysfs ? READY_WAIT_MS : 200;
    for (int waited = 0; waited < wait_ms; waited += 10) {
        if (do_it_returned(s))
            return NULL; /* do_it_thread has answered */
        if (sysfs && access(path, F_OK) == 0) {
            announce(s, 'R');
            return NULL;
        }
        struct timespec t = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    if (sysfs)
        logmsg("%s did not start within %d s (no %s)", s->dev, READY_WAIT_MS / 1000, path);
    announce(s, sysfs ? 'F' : 'R');
    return NULL;
}

static int nbd_reply(int sock, const struct nbd_request *req, uint32_t error, const void *data,
                     size_t len)
{
    struct nbd_reply rep;
    rep.magic = htonl(NBD_REPLY_MAGIC);
    rep.error = htonl(error);
    memcpy(rep.handle, req->handle, sizeof rep.handle);
    if (write_full(sock, &rep, sizeof rep) != 0 || (len > 0 && write_full(sock, data, len) != 0)) {
        logmsg("cannot answer the kernel's nbd request: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static int nbd_read(struct image *im, struct nbd_session *s, int sock,
                    const struct nbd_request *req, uint8_t *buf)
{
    uint64_t from = be64toh(req->from);
    uint32_t len = ntohl(req->len);
    if (from > s->dev_bytes || len > s->dev_bytes - from || len > NBD_REQ_MAX_BYTES) {
        logmsg("%s: refusing a read of %u bytes at %" PRIu64 " (beyond the device or too big)",
               s->dev, len, from);
        return nbd_reply(sock, req, EINVAL, NULL, 0);
    }
    /* The last NBD_DEV_BLOCK may reach past the image: that part reads as zeros. */
    uint64_t inside = from < im->size ? min_u64(len, im->size - from) : 0;
    if (image_read(im, from, inside, buf) != EXIT_OK)
        return nbd_reply(sock, req, EIO, NULL, 0); /* image_read has logged why */
    memset(buf + inside, 0, len - inside);
    return nbd_reply(sock, req, 0, buf, len);
}

/* A write carries its data after the request: read it away to stay in step, then refuse. */
static int nbd_refuse_write(int sock, const struct nbd_request *req, uint8_t *buf)
{
    uint32_t left = ntohl(req->len);
    while (left > 0) {
        size_t n = min_u64(left, NBD_REQ_MAX_BYTES);
        if (read_full(sock, buf, n) != (ssize_t)n)
            return -1;
        left -= (uint32_t)n;
    }
    return nbd_reply(sock, req, EPERM, NULL, 0);
}

static int nbd_serve_loop(struct image *im, struct nbd_session *s, int sock, uint8_t *buf)
{
    for (;;) {
        struct nbd_request req;
        ssize_t n = read_full(sock, &req, sizeof req);
        if (n == 0)
            return EXIT_OK; /* the kernel let go of the socket: the device is gone */
        if (n != (ssize_t)sizeof req || ntohl(req.magic) != NBD_REQUEST_MAGIC) {
            logmsg("%s: malformed request from the kernel; stopping", s->dev);
            return EXIT_LOCAL;
        }
        int rc;
        switch (ntohl(req.type) & NBD_CMD_MASK) {
        case NBD_CMD_READ:
            rc = nbd_read(im, s, sock, &req, buf);
            break;
        case NBD_CMD_WRITE:
            rc = nbd_refuse_write(sock, &req, buf);
            break;
        case NBD_CMD_DISC:
            return EXIT_OK;
        case NBD_CMD_FLUSH:
            rc = nbd_reply(sock, &req, 0, NULL, 0);
            break;
        case NBD_CMD_TRIM:
            rc = nbd_reply(sock, &req, EPERM, NULL, 0);
            break;
        default:
            rc = nbd_reply(sock, &req, EINVAL, NULL, 0);
            break;
        }
        if (rc != 0)
            return EXIT_LOCAL;
    }
}

/*
 * systemd's shutdown and most initrd kill loops spare processes whose argv[0][0] is '@': they
 * serve the root file system and must outlive everything that uses it.
 */
static void mark_root_storage(char *argv0)
{
    static const char name[] = "@ucvm-blockd";
    size_t room = strlen(argv0);
    if (room >= sizeof name - 1) {
        memset(argv0, 0, room);
        memcpy(argv0, name, sizeof name - 1);
    } else if (room > 0) {
        argv0[0] = '@';
    }
}

static void detach(char *argv0)
{
    (void)setsid();
    if (chdir("/") != 0)
        logmsg("chdir /: %s", strerror(errno)); /* harmless: only keeps a directory busy */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        /* stdout/stdin may be a pipe whose reader waits for EOF; stderr is our log. */
        (void)dup2(null, STDIN_FILENO);
        (void)dup2(null, STDOUT_FILENO);
        close(null);
    }
    mark_root_storage(argv0);
    /* The OOM killer must never take the process the root file system reads through. */
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)write_full(fd, "-1000", 5);
        close(fd);
    }
}

/* The daemon: DO_IT and readiness threads, then the serving loop until the device goes away. */
static int serve_daemon(struct image *im, struct nbd_session *s, int sock, uint8_t *buf)
{
    pthread_t do_it, ready;
    if (pthread_create(&do_it, NULL, do_it_thread, s) != 0) {
        logmsg("cannot start a thread for %s", s->dev);
        return EXIT_LOCAL;
    }
    if (pthread_create(&ready, NULL, ready_thread, s) != 0 || pthread_detach(ready) != 0) {
        logmsg("cannot start a thread for %s; assuming it is ready", s->dev);
        announce(s, 'R');
    }
    int rc = nbd_serve_loop(im, s, sock, buf);
    close(sock); /* makes NBD_DO_IT return if we stopped first */
    pthread_join(do_it, NULL);
    stats_flush(im);
    http_close(&im->http);
    return rc;
}

/* The parent returns only when the device is usable, so /init can mount right after. */
static int wait_until_ready(int fd, const char *dev)
{
    char verdict = 0;
    ssize_t n;
    do
        n = read(fd, &verdict, 1);
    while (n < 0 && errno == EINTR);
    if (n == 1)
        return verdict == 'R' ? EXIT_OK : EXIT_LOCAL; /* 'F': the daemon logged why */
    logmsg("the serving process for %s exited before the device was ready", dev);
    return EXIT_LOCAL;
}

static char *g_argv0;

static int cmd_serve(int argc, char **argv)
{
    static struct options o;
    static struct image im;
    static struct nbd_session s = {.nbd_fd = -1, .ready_fd = -1,
                                   .lock = PTHREAD_MUTEX_INITIALIZER};
    int sock = -1, ready[2];
    if (parse_args(&CMD_SERVE, argc, argv, &o) != EXIT_OK || image_open(&im, &o) != EXIT_OK)
        return EXIT_LOCAL;
    s.dev = o.value[O_NBD];
    uint8_t *buf = alloc_or_log(NBD_REQ_MAX_BYTES, "the request buffer");
    if (buf == NULL || nbd_setup(&s, im.size, &sock) != EXIT_OK)
        return EXIT_LOCAL;
    /* The daemon must survive /init's and the OS's shutdown signals and a closed console. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    if (pipe2(ready, O_CLOEXEC) != 0) {
        logmsg("pipe: %s", strerror(errno));
        return EXIT_LOCAL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        logmsg("fork: %s", strerror(errno));
        return EXIT_LOCAL;
    }
    if (pid > 0) {
        close(ready[1]);
        return wait_until_ready(ready[0], s.dev);
    }
    close(ready[0]);
    s.ready_fd = ready[1];
    detach(g_argv0);
    return serve_daemon(&im, &s, sock, buf);
}

/* ------------------------------------------------------------------------------------------ */
/* disconnect: let go of an nbd device (its serving daemon sees NBD_CMD_DISC and exits)        */

#ifndef NBD_MAJOR
#define NBD_MAJOR 43
#endif

static const struct command_spec CMD_DISCONNECT = {
    "disconnect", BIT(O_NBD), BIT(O_NBD), 0, "ucvm-blockd disconnect --nbd /dev/nbdN"};

/* The device is checked by stat() before it is opened: another kind of device is never touched. */
static int check_nbd_device(const char *dev)
{
    struct stat st;
    if (stat(dev, &st) != 0) {
        logmsg("disconnect: cannot find %s: %s", dev, strerror(errno));
        return EXIT_LOCAL;
    }
    if (!S_ISBLK(st.st_mode)) {
        logmsg("disconnect: %s is not a block device, so not an nbd device (/dev/nbdN)", dev);
        return EXIT_LOCAL;
    }
    if (major(st.st_rdev) != NBD_MAJOR) {
        logmsg("disconnect: %s is not an nbd device (block device %u:%u; nbd devices have "
               "major %d)",
               dev, major(st.st_rdev), minor(st.st_rdev), NBD_MAJOR);
        return EXIT_LOCAL;
    }
    return EXIT_OK;
}

static int cmd_disconnect(int argc, char **argv)
{
    static struct options o;
    if (parse_args(&CMD_DISCONNECT, argc, argv, &o) != EXIT_OK)
        return EXIT_LOCAL;
    struct nbd_session s = {.dev = o.value[O_NBD], .nbd_fd = -1};
    if (check_nbd_device(s.dev) != EXIT_OK)
        return EXIT_LOCAL;
    s.nbd_fd = open(s.dev, O_RDWR | O_CLOEXEC);
    if (s.nbd_fd < 0) {
        logmsg("disconnect: cannot open %s: %s; is the nbd module loaded?", s.dev,
               strerror(errno));
        return EXIT_LOCAL;
    }
    int rc = nbd_ioctl(&s, NBD_DISCONNECT, 0, "NBD_DISCONNECT");
    if (rc == EXIT_OK)
        rc = nbd_ioctl(&s, NBD_CLEAR_SOCK, 0, "NBD_CLEAR_SOCK");
    close(s.nbd_fd);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* kexec: load another kernel and initramfs with kexec_file_load(2), then reboot into it       */

static const struct command_spec CMD_KEXEC = {
    "kexec", BIT(O_LOAD_ONLY), 0, 3, "ucvm-blockd kexec KERNEL INITRD CMDLINE [--load-only]"};

/* A regular, non-empty file, opened for the kernel to read; -1 once logged. */
static int open_boot_file(const char *path, const char *what)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        logmsg("kexec: cannot open the %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        logmsg("kexec: the %s %s is not a regular non-empty file", what, path);
        close(fd);
        return -1;
    }
    return fd;
}

/* What an errno of kexec_file_load(2) means here, in words. */
static const char *kexec_error_hint(int err)
{
    switch (err) {
    case EPERM:
        return "needs root (CAP_SYS_BOOT); kexec may also be disabled by "
               "kernel.kexec_load_disabled, kernel lockdown or a seccomp filter";
    case ENOEXEC:
        return "the kernel file is not a bzImage this kernel can load";
    case EKEYREJECTED:
    case EKEYREVOKED:
    case EKEYEXPIRED:
    case ENOKEY:
    case EBADMSG:
    case ENODATA:
    case ENOPKG:
        return "the kernel's signature was refused (KEXEC_SIG / lockdown): boot a signed kernel";
    case ENOSYS:
        return "this kernel has no kexec_file_load (CONFIG_KEXEC_FILE)";
    case EBUSY:
        return "another kexec load is in progress";
    case ENOMEM:
        return "not enough memory for the kernel and initrd";
    case EINVAL:
        return "the kernel refused the arguments (a command line too long, or a file it cannot "
               "read)";
    default:
        return "see the kernel log (dmesg)";
    }
}

static int kexec_load(const char *kernel, const char *initrd, const char *cmdline)
{
#ifdef SYS_kexec_file_load
    size_t cmdline_len = strlen(cmdline) + 1;
    if (cmdline_len > KEXEC_CMDLINE_MAX) {
        logmsg("kexec: CMDLINE has %zu bytes, more than the %d the kernel takes", cmdline_len - 1,
               KEXEC_CMDLINE_MAX - 1);
        return EXIT_LOCAL;
    }
    int kernel_fd = open_boot_file(kernel, "kernel");
    if (kernel_fd < 0)
        return EXIT_LOCAL;
    int initrd_fd = open_boot_file(initrd, "initrd");
    if (initrd_fd < 0) {
        close(kernel_fd);
        return EXIT_LOCAL;
    }
    long rc = syscall(SYS_kexec_file_load, kernel_fd, initrd_fd, cmdline_len, cmdline, 0UL);
    int err = errno;
    close(kernel_fd);
    close(initrd_fd);
    if (rc != 0) {
        logmsg("kexec: kexec_file_load of %s with %s failed: %s (%s)", kernel, initrd,
               strerror(err), kexec_error_hint(err));
        return EXIT_LOCAL;
    }
    return EXIT_OK;
#else
    (void)kernel, (void)initrd, (void)cmdline;
    logmsg("kexec: this build of ucvm-blockd has no kexec_file_load (not x86_64)");
    return EXIT_LOCAL;
#endif
}

static int cmd_kexec(int argc, char **argv)
{
    static struct options o;
    if (parse_args(&CMD_KEXEC, argc, argv, &o) != EXIT_OK)
        return EXIT_LOCAL;
    if (kexec_load(o.positional[0], o.positional[1], o.positional[2]) != EXIT_OK)
        return EXIT_LOCAL;
    if (o.value[O_LOAD_ONLY] != NULL) {
        puts("loaded");
        return fflush(stdout) == 0 ? EXIT_OK : EXIT_LOCAL;
    }
    sync();
    reboot(RB_KEXEC); /* returns only on failure */
    logmsg("kexec: reboot(LINUX_REBOOT_CMD_KEXEC) failed: %s; the new kernel stays loaded",
           strerror(errno));
    return EXIT_LOCAL;
}

/* ------------------------------------------------------------------------------------------ */

#ifndef __GLIBC__
/*
 * Debian's libsodium.a is built against glibc with _FORTIFY_SOURCE, so it calls glibc's checked
 * explicit_bzero. musl has only the plain one; this is glibc's check in front of it.
 */
void __explicit_bzero_chk(void *dst, size_t len, size_t dst_len);
void __explicit_bzero_chk(void *dst, size_t len, size_t dst_len)
{
    if (len > dst_len)
        abort();
    explicit_bzero(dst, len);
}
#endif

int main(int argc, char **argv)
{
    g_argv0 = argv[0];
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(USAGE, stdout);
        return EXIT_OK;
    }
    if (argc < 2) {
        logmsg("no command given (see ucvm-blockd --help)");
        return EXIT_LOCAL;
    }
    signal(SIGPIPE, SIG_IGN); /* a closed socket or stdout is an error return, not a death */
    if (sodium_init() < 0) {
        logmsg("libsodium failed to initialise");
        return EXIT_LOCAL;
    }
    if (strcmp(argv[1], "get") == 0)
        return cmd_get(argc - 2, argv + 2);
    if (strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc - 2, argv + 2);
    if (strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 2, argv + 2);
    if (strcmp(argv[1], "cat") == 0)
        return cmd_cat(argc - 2, argv + 2);
    if (strcmp(argv[1], "disconnect") == 0)
        return cmd_disconnect(argc - 2, argv + 2);
    if (strcmp(argv[1], "kexec") == 0)
        return cmd_kexec(argc - 2, argv + 2);
    logmsg("unknown command '%s'; expected get, verify, serve, cat, disconnect or kexec (see "
           "ucvm-blockd --help)",
           argv[1]);
    return EXIT_LOCAL;
}
