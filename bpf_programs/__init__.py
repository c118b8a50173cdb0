"""The BPF C sources pytest-chaos loads through bcc, shipped inside the package as
``pytest_chaos.bpf_programs`` and found with importlib.resources."""
