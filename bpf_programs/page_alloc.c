// Pages allocated and freed by processes of the watched pid namespaces
// (kmem:mm_page_alloc / mm_page_free / mm_page_free_batched, counted in 4 KiB pages:
// an order-n allocation is 2^n pages), and memory-pressure events: reclaim they had to
// do themselves, in their memory cgroup or host-wide, before an allocation could be
// served. Scoped by pid namespace, so even a process that lives a few milliseconds is
// counted. Allocations minus frees is the growth the guide's experiment 03 watches.

// Also in the other pid-namespace-scoped program: bcc rewrites map accesses only in
// the main source file, so this cannot live in a shared header.
struct pid_namespace {
    u64 dev;
    u64 ino;
};

BPF_ARRAY(pid_namespaces, struct pid_namespace, 8);
// [0] pages allocated, [1] pages freed, [2] reclaim events (memcg or direct)
BPF_ARRAY(pages, u64, 3);

#ifndef CHAOS_PID_MAX
#define CHAOS_PID_MAX 4194304
#endif
// Page allocations and frees are among the kernel's most frequent events: each
// thread's verdict (1 in scope, 2 not) is worked out once and kept by thread id,
// forgotten when the thread exits (before its id can be reused).
BPF_ARRAY(verdicts, u8, CHAOS_PID_MAX);

// 1: the current task is in a watched pid namespace; 0: it is not; -1: no namespace
// is set yet. The program is attached before userspace fills pid_namespaces: a
// verdict worked out meanwhile would wrongly keep a long-lived thread out for good.
static inline int current_scope(void) {
    struct bpf_pidns_info info = {};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int index = i;
        struct pid_namespace *ns = pid_namespaces.lookup(&index);
        if (!ns || ns->ino == 0)
            return i == 0 ? -1 : 0;
        if (bpf_get_ns_current_pid_tgid(ns->dev, ns->ino, &info, sizeof(info)) == 0)
            return 1;
    }
    return 0;
}

static inline u32 current_in_scope(void) {
    int tid = (u32)bpf_get_current_pid_tgid();
    u8 *verdict = verdicts.lookup(&tid);
    if (!verdict)
        return current_scope() == 1;
    if (*verdict == 0) {
        int found = current_scope();
        if (found < 0)
            return 0;  // not set up yet: decide later
        *verdict = found ? 1 : 2;
    }
    return *verdict == 1;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    int tid = (u32)bpf_get_current_pid_tgid();
    u8 *verdict = verdicts.lookup(&tid);
    if (verdict)
        *verdict = 0;
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_alloc) {
    if (!current_in_scope())
        return 0;
    int zero = 0;
    u64 *count = pages.lookup(&zero);
    if (count)
        __sync_fetch_and_add(count, 1ULL << args->order);
    return 0;
}

static inline void add(int index, u64 value) {
    u64 *count = pages.lookup(&index);
    if (count)
        __sync_fetch_and_add(count, value);
}

TRACEPOINT_PROBE(kmem, mm_page_free) {
    if (current_in_scope())
        add(1, 1ULL << args->order);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_free_batched) {
    if (current_in_scope())
        add(1, 1);
    return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin) {
    if (current_in_scope())
        add(2, 1);
    return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_direct_reclaim_begin) {
    if (current_in_scope())
        add(2, 1);
    return 0;
}
