// Block-I/O latency on the watched devices, issue to completion, keyed by device
// and sector; separate log2 histograms (microseconds) for reads and writes.
// block:block_rq_issue, block:block_rq_complete.
//
// And the disk as the watched processes wait for it: fsync/fdatasync durations of
// processes in the watched pid namespaces (a database's commits wait in these). The
// device latency above cannot show a cgroup's I/O throttling (bios are held before they
// reach the device queue) nor, on a fast disk, much of contention; these syscalls do.

struct pid_namespace {
    u64 dev;
    u64 ino;
};

// Also in the other pid-namespace-scoped programs: bcc rewrites map accesses only in
// the main source file, so this cannot live in a shared header.
BPF_ARRAY(pid_namespaces, struct pid_namespace, 8);
BPF_HASH(sync_started, u32, u64, 65536);
BPF_HISTOGRAM(sync_us, int, 64);

#ifndef CHAOS_PID_MAX
#define CHAOS_PID_MAX 4194304
#endif
// Each thread's verdict (1 in scope, 2 not), worked out once and kept by thread id,
// forgotten when the thread exits (before its id can be reused): a database syncs
// hundreds of times a second, and the namespace helpers cost a microsecond or so.
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

static inline void sync_enter(void) {
    if (!current_in_scope())
        return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
    sync_started.update(&tid, &now);
}

static inline void sync_exit(void) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *started = sync_started.lookup(&tid);
    if (!started)
        return;
    sync_us.increment(bpf_log2l((bpf_ktime_get_ns() - *started) / 1000));
    sync_started.delete(&tid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fsync) {
    sync_enter();
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fsync) {
    sync_exit();
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fdatasync) {
    sync_enter();
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fdatasync) {
    sync_exit();
    return 0;
}

struct request_key {
    u32 dev;
    u32 pad;
    u64 sector;
};

BPF_HASH(devices, u32, u8, 64);
BPF_HASH(issued_at, struct request_key, u64, 65536);
BPF_HISTOGRAM(read_us, int, 64);
BPF_HISTOGRAM(write_us, int, 64);

TRACEPOINT_PROBE(block, block_rq_issue) {
    u32 dev = args->dev;
    if (!devices.lookup(&dev))
        return 0;
    struct request_key key = {.dev = dev, .sector = args->sector};
    u64 now = bpf_ktime_get_ns();
    issued_at.update(&key, &now);
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete) {
    struct request_key key = {.dev = args->dev, .sector = args->sector};
    u64 *issued = issued_at.lookup(&key);
    if (!issued)
        return 0;
    u64 delta_us = (bpf_ktime_get_ns() - *issued) / 1000;
    if (args->rwbs[0] == 'R')
        read_us.increment(bpf_log2l(delta_us));
    else
        write_us.increment(bpf_log2l(delta_us));
    issued_at.delete(&key);
    return 0;
}
