"""Result files shared by the benchmark scripts (imported from their own folder)."""

from pathlib import Path
import sys

RESULTS = Path(__file__).resolve().parent / 'results'


def command_line(script, argv=None):
    """Return the command line that repeats this run (``argv`` None: this process's)."""
    args = sys.argv[1:] if argv is None else argv
    return ' '.join(['python', f'benchmarks/{script}', *args])


def write_report(text, out=None, name=None, quiet=False):
    """Write ``text`` to ``out`` (default ``results/<name>.md``), print it; return the path.

    :param quiet: write only (an intermediate save of a run that goes on).
    """
    path = Path(out) if out is not None else RESULTS / f'{name}.md'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if not quiet:
        print(f'\n{text}\nwrote {path}')
    return path
