// TCP connect attempts made from the scoped addresses: when each started, and how
// it ended (established, or the socket error the kernel reported: ECONNREFUSED,
// ETIMEDOUT, ...). Tracepoints only: sock:inet_sock_set_state and
// sock:inet_sk_error_report; their arguments are the stable interface.
//
// Userspace fills `scope` with the IPv4 addresses (network byte order) of the
// service under observation, and pairs events into attempts: by socket address for
// state changes, by 4-tuple for error reports (the source port is only assigned
// after the socket enters SYN_SENT).

#define CHAOS_AF_INET 2
#define CHAOS_IPPROTO_TCP 6
#define CHAOS_TCP_ESTABLISHED 1
#define CHAOS_TCP_SYN_SENT 2
#define CHAOS_TCP_CLOSE 7

enum connect_event_kind {
    CONNECT_STARTED = 1,
    CONNECT_ESTABLISHED = 2,
    CONNECT_ERROR = 3,
    CONNECT_CLOSED = 4,
};

struct connect_event {
    u64 ts_ns;
    u64 skaddr;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    s32 error;
    u32 kind;
};

BPF_HASH(scope, u32, u8, 64);
BPF_PERF_OUTPUT(connect_events);

static inline int in_scope(u32 addr) {
    return scope.lookup(&addr) != NULL;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != CHAOS_IPPROTO_TCP || args->family != CHAOS_AF_INET)
        return 0;
    u32 saddr = 0, daddr = 0;
    __builtin_memcpy(&saddr, args->saddr, 4);
    __builtin_memcpy(&daddr, args->daddr, 4);
    if (!in_scope(saddr))
        return 0;
    u32 kind = 0;
    if (args->newstate == CHAOS_TCP_SYN_SENT)
        kind = CONNECT_STARTED;
    else if (args->oldstate == CHAOS_TCP_SYN_SENT && args->newstate == CHAOS_TCP_ESTABLISHED)
        kind = CONNECT_ESTABLISHED;
    else if (args->oldstate == CHAOS_TCP_SYN_SENT && args->newstate == CHAOS_TCP_CLOSE)
        kind = CONNECT_CLOSED;
    else
        return 0;
    struct connect_event event = {};
    event.ts_ns = bpf_ktime_get_ns();
    event.skaddr = (u64)args->skaddr;
    event.saddr = saddr;
    event.daddr = daddr;
    event.sport = args->sport;
    event.dport = args->dport;
    event.kind = kind;
    connect_events.perf_submit(args, &event, sizeof(event));
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sk_error_report) {
    if (args->protocol != CHAOS_IPPROTO_TCP || args->family != CHAOS_AF_INET)
        return 0;
    u32 saddr = 0, daddr = 0;
    __builtin_memcpy(&saddr, args->saddr, 4);
    __builtin_memcpy(&daddr, args->daddr, 4);
    if (!in_scope(saddr))
        return 0;
    struct connect_event event = {};
    event.ts_ns = bpf_ktime_get_ns();
    event.saddr = saddr;
    event.daddr = daddr;
    event.sport = args->sport;
    event.dport = args->dport;
    event.error = args->error;
    event.kind = CONNECT_ERROR;
    connect_events.perf_submit(args, &event, sizeof(event));
    return 0;
}
