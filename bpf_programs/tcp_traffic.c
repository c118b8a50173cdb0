// TCP traffic of the scoped addresses, per service port: connections established,
// data segments and payload bytes they received, and round-trip times. Tracepoints
// only: tcp:tcp_probe (every segment a socket receives while established),
// sock:inet_sock_set_state and, where the kernel has it (6.4 and later),
// sock:sock_send_length.
//
// A flow is keyed by its role and its service port. "served": the scope is the
// server, the port is its own (e.g. nginx's 80); "peer": the scope is the client,
// the port is its peer's (e.g. PostgreSQL's 5432 seen from the API). For segments
// the smaller of the two ports is taken as the service port (ephemeral ports are
// above the registered ones on every default port range); for connections the
// direction of the handshake says it.
//
// Round trips, in 0.1 ms buckets: "pair" is the time from the first send on a
// connection where the scope is the client to the first data it then receives (a
// request and its response: network round trip plus the peer's work); "srtt" is
// the kernel's smoothed RTT of the socket at each data segment received. Pairs need
// the socket's address in tcp:tcp_probe and sock:sock_send_length (userspace
// defines CHAOS_PAIRS where the kernel has both); srtt works everywhere.

#define CHAOS_AF_INET 2
#define CHAOS_IPPROTO_TCP 6
#define CHAOS_TCP_ESTABLISHED 1
#define CHAOS_TCP_SYN_SENT 2
#define CHAOS_TCP_SYN_RECV 3
#define CHAOS_TCP_CLOSE 7

#define ROLE_SERVED 1
#define ROLE_PEER 2
#define KIND_SRTT 0
#define KIND_PAIR 1
#define BUCKET_US 100
#define MAX_BUCKET 65535

struct flow {
    u64 bytes;
    u64 segments;
    u64 connections;
};

struct rtt_key {
    u32 flow;      // role << 16 | port
    u32 kind;      // KIND_SRTT or KIND_PAIR
    u32 bucket;    // in BUCKET_US
};

BPF_HASH(scope, u32, u8, 64);
BPF_HASH(flows, u32, struct flow, 1024);
BPF_HASH(rtt, struct rtt_key, u64, 16384);
// Client sockets of the scope (socket address -> flow), and when each sent the
// request not yet answered.
BPF_TABLE("lru_hash", u64, u32, client_sockets, 8192);
BPF_TABLE("lru_hash", u64, u64, sent_at, 8192);

static inline int in_scope(u32 addr) {
    return scope.lookup(&addr) != NULL;
}

static inline struct flow *flow_of(u32 key) {
    struct flow zero = {};
    return flows.lookup_or_try_init(&key, &zero);
}

static inline void sample(u32 key, u32 kind, u64 us) {
    u64 bucket = us / BUCKET_US;
    if (bucket > MAX_BUCKET)
        bucket = MAX_BUCKET;
    struct rtt_key k = {.flow = key, .kind = kind, .bucket = (u32)bucket};
    u64 zero = 0;
    u64 *count = rtt.lookup_or_try_init(&k, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
}

TRACEPOINT_PROBE(tcp, tcp_probe) {
    if (args->family != CHAOS_AF_INET || args->data_len == 0)
        return 0;
    u32 saddr = 0;
    // saddr holds a struct sockaddr_in of the socket's local end: family, port, address.
    __builtin_memcpy(&saddr, (u8 *)args->saddr + 4, 4);
    if (!in_scope(saddr))
        return 0;
    u16 sport = args->sport, dport = args->dport;
    u32 key = sport <= dport ? (ROLE_SERVED << 16) | sport : (ROLE_PEER << 16) | dport;
    struct flow *f = flow_of(key);
    if (f) {
        __sync_fetch_and_add(&f->bytes, args->data_len);
        __sync_fetch_and_add(&f->segments, 1);
    }
    sample(key, KIND_SRTT, args->srtt);
#ifdef CHAOS_PAIRS
    if ((key >> 16) != ROLE_PEER)
        return 0;
    u64 sk = (u64)args->skaddr;
    // Every segment a client socket receives comes here: update only a socket not
    // known yet (a lookup costs a fraction of an LRU update).
    u32 *known = client_sockets.lookup(&sk);
    if (!known || *known != key)
        client_sockets.update(&sk, &key);
    u64 *sent = sent_at.lookup(&sk);
    if (sent) {
        u64 now = bpf_ktime_get_ns();
        if (now > *sent)
            sample(key, KIND_PAIR, (now - *sent) / 1000);
        sent_at.delete(&sk);
    }
#endif
    return 0;
}

#ifdef CHAOS_PAIRS
TRACEPOINT_PROBE(sock, sock_send_length) {
    if (args->family != CHAOS_AF_INET || args->protocol != CHAOS_IPPROTO_TCP || args->ret <= 0)
        return 0;
    u64 sk = (u64)args->sk;
    if (!client_sockets.lookup(&sk) || sent_at.lookup(&sk))
        return 0;  // not a client socket seen receiving yet, or a request already pending
    u64 now = bpf_ktime_get_ns();
    sent_at.update(&sk, &now);
    return 0;
}
#endif

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != CHAOS_IPPROTO_TCP || args->family != CHAOS_AF_INET)
        return 0;
#ifdef CHAOS_PAIRS
    if (args->newstate == CHAOS_TCP_CLOSE) {
        // A closed socket's address may be reused: forget what was known of it.
        u64 closed = (u64)args->skaddr;
        client_sockets.delete(&closed);
        sent_at.delete(&closed);
        return 0;
    }
#endif
    if (args->newstate != CHAOS_TCP_ESTABLISHED)
        return 0;
    u32 saddr = 0;
    __builtin_memcpy(&saddr, args->saddr, 4);
    if (!in_scope(saddr))
        return 0;
    // Read the arguments before branching (volatile: one load each). Merged into one
    // load at a branch-dependent offset, the verifier refuses the moved context pointer.
    int oldstate = args->oldstate;
    volatile u16 sport = args->sport;
    volatile u16 dport = args->dport;
    u32 key;
    if (oldstate == CHAOS_TCP_SYN_RECV)
        key = (ROLE_SERVED << 16) | sport;
    else if (oldstate == CHAOS_TCP_SYN_SENT)
        key = (ROLE_PEER << 16) | dport;
    else
        return 0;
    struct flow *f = flow_of(key);
    if (f)
        __sync_fetch_and_add(&f->connections, 1);
    return 0;
}
