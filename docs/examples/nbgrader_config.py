# nbgrader_config.py: autograde every submission in the sandboxed kernel.
# Copy into the course folder (next to source/, submitted/) and set CourseDirectory.root.
# Tested by tests/integration/test_nbgrader.py. See docs/nbgrader.md.
c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

# The kernel that runs student code, whatever the submitted notebook names: nbgrader's
# Execute preprocessor is nbconvert's ExecutePreprocessor (nbclient), whose kernel_name,
# when set, wins over the notebook's metadata.
c.Execute.kernel_name = "sandbox-python"

# Per-cell timeout in seconds (nbgrader's default is 30). A cell that hits it is
# interrupted and recorded as an error; the sandbox also caps memory, CPU and processes.
c.Execute.timeout = 60

# Kernel start-up, including creating the sandbox (a warm one is usually ready).
c.Execute.startup_timeout = 120

# The sandbox's deliberate channels (docs/exchange.md) are closed while grading: student
# code must not hand files to the grader's disk (sandboxed.export writes next to the
# notebook, i.e. into autograded/<student>/) nor open ports on the grader's 127.0.0.1.
# The provisioner takes these from the same config (kernelspec settings would win).
c.SandboxProvisioner.export_limit = 0
c.SandboxProvisioner.max_runtime_ports = 0
