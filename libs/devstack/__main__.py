"""python -m libs.devstack up [--fresh]  — see libs/devstack/supervisor.py."""

from libs.devstack.supervisor import cli

if __name__ == "__main__":
    cli()
