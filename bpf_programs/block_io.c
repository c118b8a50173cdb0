// Block-I/O latency on the watched devices, issue to completion, keyed by device
// and sector; separate log2 histograms (microseconds) for reads and writes.
// block:block_rq_issue, block:block_rq_complete.

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
