"""Shell completion (bash, zsh) and the man page, generated from the parser.

Theory of operation
-------------------
Both are made from the argparse grammar itself (parser.py, every command built),
so they cannot drift from ``--help``: the commands with their help lines, each
command's options, the choices an option takes (``--cc bbr|reno``), and whether
it takes a value. ``ftransfer completion bash`` prints a script for
``source <(ftransfer completion bash)`` (or a file in bash-completion's
directory); ``ftransfer completion zsh`` a ``#compdef`` function for ``$fpath``.
Completion offers commands, options, choices and local file names; remote names
are left to the shell's default (a REMOTE is typed, not listed, here).
``ftransfer manpage`` prints the roff of ftransfer(1) (``ftransfer manpage | man
-l -``): the synopsis and options of every command, exit codes, files and
environment.
"""

from __future__ import annotations

import argparse

from .. import __version__

_GRAMMAR: list[tuple[dict[str, argparse.ArgumentParser], dict[str, str]]] = []


def _grammar() -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    """Every command's parser and its one-line help (built once)."""
    if not _GRAMMAR:
        from . import parser as grammar

        top, commands = grammar.build(None)
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        helps = {choice.dest: str(choice.help or "") for choice in sub._choices_actions}
        _GRAMMAR.append((commands, helps))
    return _GRAMMAR[0]


def _commands() -> dict[str, argparse.ArgumentParser]:
    return _grammar()[0]


def _options(command: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in command._actions if action.option_strings]


def _summary(name: str) -> str:
    return _grammar()[1].get(name, "")


# ---- bash ---------------------------------------------------------------------------------


def _first_words(command: argparse.ArgumentParser) -> list[str]:
    """What the word after the command may be, when that is a closed set (``user
    add|remove|list``, ``completion bash|zsh``)."""
    for action in command._actions:
        if not action.option_strings:
            if isinstance(action, argparse._SubParsersAction):
                return list(action.choices)
            return [str(choice) for choice in action.choices or ()]
    return []


def _bash_case(pattern: str, words: list[str], *, then: str = "") -> str:
    reply = f"COMPREPLY=($(compgen -W '{' '.join(words)}' -- \"$cur\"))"
    return f"        {pattern}) {reply}{then} ;;"


def bash() -> str:
    commands = _commands()
    options, choices, firsts = [], set(), []
    for name, command in commands.items():
        words = [option for action in _options(command) for option in action.option_strings]
        options.append(f"        {name}) opts='{' '.join(words)}' ;;")
        for action in _options(command):
            if action.choices and action.nargs != 0:
                alternatives = [str(choice) for choice in action.choices]
                for option in action.option_strings:
                    choices.add(_bash_case(option, alternatives, then="; return"))
        if first := _first_words(command):
            firsts.append(_bash_case(name, first, then="; return"))
    names = " ".join(commands)
    return f"""# bash completion for ftransfer {__version__} (made by `ftransfer completion bash`)
_ftransfer() {{
    local cur prev opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W '{names} --version --help' -- "$cur"))
        return
    fi
    if [[ $COMP_CWORD -eq 2 && $cur != -* ]]; then
        case "${{COMP_WORDS[1]}}" in
{chr(10).join("    " + line for line in firsts)}
        esac
    fi
    case "$prev" in
{chr(10).join(sorted(choices))}
    esac
    opts=''
    case "${{COMP_WORDS[1]}}" in
{chr(10).join(options)}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
}}
complete -o filenames -o bashdefault -F _ftransfer ftransfer
"""


# ---- zsh ----------------------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    for char, escaped in (("\\", "\\\\"), ("'", "'\\''"), ("[", "\\["), ("]", "\\]"), (":", "\\:")):
        text = text.replace(char, escaped)
    return text


def _zsh_spec(action: argparse.Action) -> list[str]:
    help_text = _zsh_quote(str(action.help or "").replace("%(default)s", "").split("\n")[0])
    value = ""
    if action.nargs != 0:
        metavar = _zsh_quote(str(action.metavar or action.dest).lower())
        if action.choices:
            then = f"({' '.join(map(str, action.choices))})"
        else:
            then = "_files" if "FILE" in str(action.metavar) else ""
        value = f":{metavar}:{then}"
    return [f"'{option}[{help_text}]{value}'" for option in action.option_strings]


def zsh() -> str:
    commands = _commands()
    described = " ".join(f"'{name}:{_zsh_quote(_summary(name))}'" for name in commands)
    cases = []
    for name, command in commands.items():
        specs = " \\\n                ".join(
            spec for action in _options(command) for spec in _zsh_spec(action)
        )
        rest = "'*:file:_files'"
        if first := _first_words(command):
            rest = f"'1:{name}:({' '.join(first)})' {rest}"
        cases.append(
            f"        {name})\n            _arguments {specs} \\\n                {rest} ;;"
        )
    return f"""#compdef ftransfer
# zsh completion for ftransfer {__version__} (made by `ftransfer completion zsh`)
_ftransfer() {{
    local -a commands
    commands=({described})
    if (( CURRENT == 2 )); then
        _describe 'command' commands
        return
    fi
    local command=$words[2]
    shift words
    (( CURRENT-- ))
    case $command in
{chr(10).join(cases)}
    esac
}}
_ftransfer "$@"
"""


# ---- the man page -------------------------------------------------------------------------


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in ".'" else line for line in text.split("\n"))


def manpage() -> str:
    from ..errors import ExitCode

    commands = _commands()
    out = [
        f'.TH FTRANSFER 1 "" "ftransfer {__version__}" "User Commands"',
        ".SH NAME",
        "ftransfer \\- fast, verified file transfer over TCP (TLS), UDP and TFTP",
        ".SH SYNOPSIS",
        *(
            f".B ftransfer {name}\n{_roff(_usage(command))}\n.br"
            for name, command in commands.items()
        ),
        ".SH DESCRIPTION",
        _roff(
            "ftransfer moves files between a client and a server (ftransfer serve) over a "
            "length-prefixed TCP protocol with TLS 1.3, a reliable UDP mode built for lossy "
            "and long paths (every datagram sealed with AES-128-GCM), or standard TFTP. "
            "Every file is verified with xxh3-128 before it is committed, and it appears "
            "whole at its final name or not at all. REMOTE is "
            "[tcp://|udp://|tftp://][USER@]HOST[:PORT][/PATH]."
        ),
        ".SH COMMANDS",
    ]
    for name, command in commands.items():
        out += [
            f".SS {name}",
            _roff(_summary(name) + (". " + command.description if command.description else "")),
        ]
        for action in _options(command):
            if action.help == argparse.SUPPRESS:
                continue
            flags = ", ".join(action.option_strings)
            value = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
            out += [
                ".TP",
                f"\\fB{_roff(flags)}\\fR{_roff(str(value))}",
                _roff(str(action.help or "")),
            ]
    out += [".SH EXIT STATUS", ".TP", "0", "success"]
    for code in ExitCode:
        if code:
            out += [".TP", str(int(code)), _roff(code.name.lower().replace("_", " "))]
    out += [
        ".TP",
        "130, 143",
        "interrupted (SIGINT), terminated (SIGTERM)",
        ".SH FILES",
        ".TP",
        "~/.config/ftransfer/config.toml",
        "defaults, host aliases and [serve] options",
        ".TP",
        "~/.config/ftransfer/known_hosts",
        "the servers' fingerprints, recorded on first use",
        ".TP",
        "~/.local/state/ftransfer",
        "the server's key and certificate",
        ".SH ENVIRONMENT",
        ".TP",
        "FTRANSFER_PASSWORD",
        "the password for USER@HOST (else a prompt on the terminal)",
        ".TP",
        "FTRANSFER_CONFIG",
        "another config file",
        ".TP",
        "XDG_CONFIG_HOME, XDG_STATE_HOME",
        "where the files above are",
        ".SH SEE ALSO",
        "scp(1), rsync(1), curl(1), tftp(1)",
    ]
    return "\n".join(out) + "\n"


def _synopsis(name: str, command: argparse.ArgumentParser) -> str:
    return f".B ftransfer {name}\n{_roff(_usage(command))}\n.br"


def _option_item(action: argparse.Action) -> list[str]:
    flags = _roff(", ".join(action.option_strings))
    value = "" if action.nargs == 0 else " " + _roff(str(action.metavar or action.dest.upper()))
    return [".TP", f"\\fB{flags}\\fR{value}", _roff(str(action.help or ""))]


def _usage(command: argparse.ArgumentParser) -> str:
    usage = command.format_usage().strip().removeprefix("usage: ")
    return " ".join(usage.split()[2:])


def completion(args: argparse.Namespace) -> int:
    print(bash() if args.shell == "bash" else zsh(), end="")
    return 0


def man(args: argparse.Namespace) -> int:
    print(manpage(), end="")
    return 0
