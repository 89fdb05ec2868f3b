"""A command module for tests/test_cli.py: fails the way it is told to."""

import logging


def configure_parser(p):
    p.add_argument("--fail", choices=("none", "user", "missing-file", "bug", "value-bug"),
                   default="none")


def run(args):
    from components.errors import InputError

    log = logging.getLogger("refseg.probe.zh")
    log.info("info line")
    log.debug("debug line")
    log.warning("warning line")
    if args.fail == "user":
        raise InputError("record 'r1': the text is empty")
    if args.fail == "missing-file":
        open("/nonexistent/refseg-probe.txt")  # noqa: SIM115 - the OS error is the point
    if args.fail == "bug":
        return 1 // 0
    if args.fail == "value-bug":
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")
    print("ok")
    return 0
