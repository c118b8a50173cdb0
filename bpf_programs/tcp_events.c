// TCP health of the scoped addresses: retransmitted segments they sent, resets sent
// and received, and counts of the states their sockets entered. Tracepoints only:
// tcp:tcp_retransmit_skb, tcp:tcp_send_reset, tcp:tcp_receive_reset,
// sock:inet_sock_set_state.

#define CHAOS_AF_INET 2
#define CHAOS_IPPROTO_TCP 6

// Kernels since 6.10 name `enum sk_rst_reason` in tcp:tcp_send_reset's arguments;
// older headers do not define it, and newer ones define it in a header nothing here
// includes. Renaming it to an enum of our own works with both: only its size (an
// int) matters to the argument struct bcc generates from tracefs.
#define sk_rst_reason chaos_sk_rst_reason
enum chaos_sk_rst_reason { CHAOS_SK_RST_REASON_UNKNOWN = 0 };

enum tcp_counter {
    RETRANSMITS = 0,
    RESETS_SENT = 1,
    RESETS_RECEIVED = 2,
    RETRANSMIT_FAILURES = 3,
};

BPF_HASH(scope, u32, u8, 64);
BPF_ARRAY(counters, u64, 4);
BPF_ARRAY(states, u64, 16);

static inline int in_scope(u32 addr) {
    return scope.lookup(&addr) != NULL;
}

static inline void bump(int index) {
    u64 *value = counters.lookup(&index);
    if (value)
        __sync_fetch_and_add(value, 1);
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
    if (args->family != CHAOS_AF_INET)
        return 0;
    u32 saddr = 0;
    __builtin_memcpy(&saddr, args->saddr, 4);
    if (!in_scope(saddr))
        return 0;
#ifdef CHAOS_RETRANSMIT_HAS_ERR
    // Newer kernels trace failed attempts too. -EBUSY: the original was still queued,
    // nothing was retransmitted. Other errors (e.g. dropped on the way out) count as
    // retransmissions that failed, as the kernel counts them (RetransSegs and
    // TCPRetransFail both, measured on 6.18).
    if (args->err == -16)
        return 0;
    if (args->err != 0)
        bump(RETRANSMIT_FAILURES);
#endif
    bump(RETRANSMITS);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset) {
    if (args->family != CHAOS_AF_INET)
        return 0;
    u32 saddr = 0;
    __builtin_memcpy(&saddr, args->saddr, 4);
    if (in_scope(saddr))
        bump(RESETS_RECEIVED);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_send_reset) {
    // saddr and daddr hold a struct sockaddr_in here (family, port, address); saddr
    // is the reset's sender, also for a reset without a socket (the kernel swaps the
    // addresses of the packet it answers). Only resets the scope sent count: a reset
    // sent *to* the scope is its peer's.
    u16 family = 0;
    u32 saddr = 0;
    __builtin_memcpy(&family, args->saddr, 2);
    if (family != CHAOS_AF_INET)
        return 0;
    __builtin_memcpy(&saddr, (u8 *)args->saddr + 4, 4);
    if (in_scope(saddr))
        bump(RESETS_SENT);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != CHAOS_IPPROTO_TCP || args->family != CHAOS_AF_INET)
        return 0;
    u32 saddr = 0;
    __builtin_memcpy(&saddr, args->saddr, 4);
    if (!in_scope(saddr))
        return 0;
    int state = args->newstate & 15;
    u64 *value = states.lookup(&state);
    if (value)
        __sync_fetch_and_add(value, 1);
    return 0;
}
