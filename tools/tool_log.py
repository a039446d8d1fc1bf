"""A GPU tool's log: each line printed as it comes and kept; `run(main)` writes the kept lines to
$OUT/<name> when OUT is set (the device machine returns what is under $OUT), even if main fails."""
import os


class ToolLog:
    def __init__(self, name):
        self.name, self.lines = name, []

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.lines.append(line)

    def run(self, main):
        try:
            main()
        finally:
            if os.environ.get("OUT"):
                with open(os.path.join(os.environ["OUT"], self.name), "w") as f:
                    f.write("\n".join(self.lines) + "\n")
