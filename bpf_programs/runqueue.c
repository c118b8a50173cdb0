// Run-queue latency of the threads of the watched pid namespaces: from wakeup (or
// preemption while still runnable) to running again, in a log2 histogram of
// microseconds. sched:sched_wakeup, sched:sched_wakeup_new, sched:sched_switch, and
// sched:sched_process_exit to forget a thread.
//
// These fire on every wakeup and context switch of the host, so the test comes
// first and is cheap: each thread's verdict (1 watched, 2 not) is kept in an array
// indexed by thread id (CHAOS_PID_MAX, the kernel's pid_max, from userspace), which
// the verifier inlines. A thread's verdict is worked out with the pid-namespace
// helpers when it is switched out (it is the current task then), and forgotten when
// it exits, before its id can be reused; userspace seeds the services' threads as
// the session opens, so their first waits count too.

#ifndef CHAOS_PID_MAX
#define CHAOS_PID_MAX 4194304
#endif

// Also in the other pid-namespace-scoped programs: bcc rewrites map accesses only in
// the main source file, so this cannot live in a shared header.
struct pid_namespace {
    u64 dev;
    u64 ino;
};

BPF_ARRAY(pid_namespaces, struct pid_namespace, 8);
BPF_ARRAY(verdicts, u8, CHAOS_PID_MAX);
BPF_HASH(queued_at, u32, u64, 65536);
BPF_HISTOGRAM(runq_us, int, 64);

// 1: the current task is in a watched pid namespace; 0: it is not; -1: no namespace
// is set yet. The program is attached before userspace fills pid_namespaces: a
// verdict worked out meanwhile would wrongly keep a thread out for good.
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

static inline int is_watched(u32 tid) {
    int index = tid;
    u8 *verdict = verdicts.lookup(&index);
    return verdict && *verdict == 1;
}

static inline void enqueue(u32 tid) {
    if (!is_watched(tid))
        return;
    u64 now = bpf_ktime_get_ns();
    queued_at.update(&tid, &now);
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    enqueue(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new) {
    enqueue(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    // The task switched out is the current one: learn its verdict once.
    int prev = args->prev_pid;
    u8 *verdict = verdicts.lookup(&prev);
    if (verdict && *verdict == 0) {
        int found = current_scope();
        if (found >= 0)
            *verdict = found ? 1 : 2;
    }
    // Still runnable when switched out (it waits for a CPU again): state R, reported as
    // 0, or R+ for a preemption, which the tracepoint reports as TASK_REPORT_MAX (0x100)
    // with no state bit in the low byte. A task throttled by its CPU quota is one of these.
    if ((args->prev_state & 0xff) == 0 && verdict && *verdict == 1) {
        u32 tid = prev;
        u64 now = bpf_ktime_get_ns();
        queued_at.update(&tid, &now);
    }
    u32 next = args->next_pid;
    if (!is_watched(next))
        return 0;
    u64 *queued = queued_at.lookup(&next);
    if (!queued)
        return 0;
    u64 delta_us = (bpf_ktime_get_ns() - *queued) / 1000;
    runq_us.increment(bpf_log2l(delta_us));
    queued_at.delete(&next);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    int tid = (u32)bpf_get_current_pid_tgid();
    u8 *verdict = verdicts.lookup(&tid);
    if (verdict)
        *verdict = 0;
    u32 key = tid;
    queued_at.delete(&key);
    return 0;
}
