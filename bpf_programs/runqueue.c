// Run-queue latency of the watched threads: from wakeup (or preemption while still
// runnable) to running again, in a log2 histogram of microseconds.
// sched:sched_wakeup, sched:sched_wakeup_new, sched:sched_switch.
//
// These fire on every wakeup and context switch of the host: the test whether a
// thread is watched is an array indexed by thread id (CHAOS_PID_MAX, the kernel's
// pid_max, from userspace), which the verifier inlines, so an unwatched switch costs
// two array reads and no hashing.

#ifndef CHAOS_PID_MAX
#define CHAOS_PID_MAX 4194304
#endif

BPF_ARRAY(watched, u8, CHAOS_PID_MAX);
BPF_HASH(queued_at, u32, u64, 65536);
BPF_HISTOGRAM(runq_us, int, 64);

static inline int is_watched(u32 tid) {
    int index = tid;
    u8 *flag = watched.lookup(&index);
    return flag && *flag;
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
    // Still runnable when switched out (it waits for a CPU again): state R, reported as
    // 0, or R+ for a preemption, which the tracepoint reports as TASK_REPORT_MAX (0x100)
    // with no state bit in the low byte. A task throttled by its CPU quota is one of these.
    if ((args->prev_state & 0xff) == 0)
        enqueue(args->prev_pid);
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
