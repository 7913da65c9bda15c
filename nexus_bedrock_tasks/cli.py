"""`nexus-bedrock`: run Bedrock Agents as Prefect flows, traced into Nexus.

Import-time work stays small here: Prefect, boto3 and the servers are imported inside
the commands that need them, so `--help`, `inspect` and `outbox status` answer fast.
"""

from __future__ import annotations

import typer

from nexus_bedrock_tasks.cli_eval import register as register_eval
from nexus_bedrock_tasks.cli_inspect import register as register_inspect
from nexus_bedrock_tasks.cli_invoke import register as register_invoke
from nexus_bedrock_tasks.cli_reconcile import register as register_reconcile
from nexus_bedrock_tasks.local.bedrock.commands import register as register_local_bedrock
from nexus_bedrock_tasks.local.nexus.commands import register as register_local_nexus
from nexus_bedrock_tasks.local.stack_commands import register as register_local_stack
from nexus_bedrock_tasks.nexus.commands import register as register_outbox

app = typer.Typer(
    name="nexus-bedrock",
    help=(
        "Run AWS Bedrock Agents as Prefect workflows and mirror every invocation into Nexus.\n\n"
        "Offline quick start: `make demo` starts the local Bedrock emulator and local Nexus, "
        "then runs the demo agent."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
local_app = typer.Typer(
    help=(
        "The embedded local stack: a Bedrock Agent Runtime emulator, a Nexus-compatible API "
        "and a Prefect server. `local up` starts all three in the background (`status`, "
        "`env`, `down`); `local bedrock` / `local nexus` run one in the foreground."
    ),
    no_args_is_help=True,
)
outbox_app = typer.Typer(
    help="The durable spool of traces and spans not yet acknowledged by Nexus.",
    no_args_is_help=True,
)
app.add_typer(local_app, name="local")
app.add_typer(outbox_app, name="outbox")

register_invoke(app)
register_eval(app)
register_inspect(app)
register_reconcile(app)
register_local_bedrock(local_app)
register_local_nexus(local_app)
register_local_stack(local_app)
register_outbox(outbox_app)


def main() -> None:
    """Console-script entry point; a bad ``NEXUS_*`` variable is one line naming it, exit 2."""
    from pydantic import ValidationError

    from nexus_bedrock_tasks.settings import settings_problem

    try:
        app()
    except ValidationError as exc:
        problem = settings_problem(exc)
        if problem is None:
            raise
        typer.echo(f"error: {problem}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
