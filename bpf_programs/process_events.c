// Process fates: OOM victims (oom:mark_victim), fatal signals generated
// (signal:signal_generate) and exits of whole processes (sched:sched_process_exit,
// thread-group leaders only, of the watched pid namespaces). OOM kills and fatal
// signals are rare: all are reported, and userspace keeps those of the services
// under observation (their pids).

#define CHAOS_SIGINT 2
#define CHAOS_SIGABRT 6
#define CHAOS_SIGKILL 9
#define CHAOS_SIGSEGV 11
#define CHAOS_SIGTERM 15

enum process_event_kind {
    OOM_VICTIM = 1,
    FATAL_SIGNAL = 2,
    PROCESS_EXIT = 3,
};

struct process_event {
    u64 ts_ns;
    u32 kind;
    s32 pid;
    s32 sig;
    s32 result;
    u32 in_scope;  // the current task is in a watched pid namespace
    char comm[16];
};

BPF_PERF_OUTPUT(process_events);
// Also in the other pid-namespace-scoped program: bcc rewrites map accesses only in
// the main source file, so this cannot live in a shared header.
struct pid_namespace {
    u64 dev;
    u64 ino;
};

BPF_ARRAY(pid_namespaces, struct pid_namespace, 8);

static inline u32 current_in_scope(void) {
    struct bpf_pidns_info info = {};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int index = i;
        struct pid_namespace *ns = pid_namespaces.lookup(&index);
        if (!ns || ns->ino == 0)
            return 0;
        if (bpf_get_ns_current_pid_tgid(ns->dev, ns->ino, &info, sizeof(info)) == 0)
            return 1;
    }
    return 0;
}

TRACEPOINT_PROBE(oom, mark_victim) {
    struct process_event event = {};
    event.ts_ns = bpf_ktime_get_ns();
    event.kind = OOM_VICTIM;
    event.pid = args->pid;
    event.in_scope = current_in_scope();  // the allocating task, in the victim's memcg
    // A __data_loc string: its offset from the start of the record in the low 16 bits.
    bpf_probe_read_kernel_str(&event.comm, sizeof(event.comm),
                              (void *)args + (args->data_loc_comm & 0xFFFF));
    process_events.perf_submit(args, &event, sizeof(event));
    return 0;
}

TRACEPOINT_PROBE(signal, signal_generate) {
    int sig = args->sig;
    if (sig != CHAOS_SIGKILL && sig != CHAOS_SIGTERM && sig != CHAOS_SIGINT &&
        sig != CHAOS_SIGSEGV && sig != CHAOS_SIGABRT)
        return 0;
    struct process_event event = {};
    event.ts_ns = bpf_ktime_get_ns();
    event.kind = FATAL_SIGNAL;
    event.pid = args->pid;
    event.sig = sig;
    event.result = args->result;
    __builtin_memcpy(&event.comm, args->comm, sizeof(event.comm));
    process_events.perf_submit(args, &event, sizeof(event));
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != (u32)(id >> 32))
        return 0;  // a thread, not the process
    // Exits are frequent on a busy host (health checks, shells): only those of the
    // watched pid namespaces go to userspace.
    if (!current_in_scope())
        return 0;
    struct process_event event = {};
    event.ts_ns = bpf_ktime_get_ns();
    event.kind = PROCESS_EXIT;
    event.in_scope = 1;
    event.pid = args->pid;
    __builtin_memcpy(&event.comm, args->comm, sizeof(event.comm));
    process_events.perf_submit(args, &event, sizeof(event));
    return 0;
}
