"""Config: defaults < TOML < env < flags, one problem line per bad variable, secrets hidden."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from botd import codec
from botd import config as cfg
from botd.cli import build_parser, main
from botd.config import (
    ENV_VARS,
    BotConfig,
    Secret,
    flag_name,
    load_config,
    redacted,
    settings_table,
    to_env,
)
from botd.config.accepted import parse_ops_addr
from botd.errors import ConfigError
from tests.support.paths import REPO

SEED_NAMES = {
    "bot_id": "BOT_ID",
    "main_server_url": "MAIN_SERVER_URL",
    "processing_duration_ms": "PROCESSING_DURATION_MS",
    "heartbeat_interval_ms": "HEARTBEAT_INTERVAL_MS",
    "failure_rate": "FAILURE_RATE",
    "max_startup_attempts": "MAX_STARTUP_ATTEMPTS",
    "circuit_breaker_threshold": "CIRCUIT_BREAKER_THRESHOLD",
    "circuit_breaker_timeout": "CIRCUIT_BREAKER_TIMEOUT",
    "retry_base_delay": "RETRY_BASE_DELAY",
    "retry_max_delay": "RETRY_MAX_DELAY",
}
ALL_ENV = {env for env, _ in ENV_VARS.values()}


def problems_of(**kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return info.value.problems


# --- names and defaults ------------------------------------------------------------------


def test_env_names_seed_unprefixed_new_ones_bot_prefixed() -> None:
    assert set(ENV_VARS) == {f.name for f in attrs.fields(BotConfig)}
    for field, (env, help_text) in ENV_VARS.items():
        assert env == SEED_NAMES.get(field, "BOT_" + field.upper())
        assert help_text


README = REPO / "README.md"


def test_readme_settings_table_is_the_fields() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("-->", text.index("<!-- settings:start")) + len("-->")
    table = text[start : text.index("<!-- settings:end -->")]
    assert table.strip() == settings_table().strip(), "regenerate it with settings_table()"


def test_settings_table_has_a_row_per_field() -> None:
    rows = settings_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{env}`" for env, _ in ENV_VARS.values()]
    assert "| `BOT_LABELS` | `(empty)` |" in settings_table()
    assert "| `BOT_EXEC_SHELL` | `false` |" in settings_table()


def options_of(command: str) -> dict[str, Any]:
    parser = build_parser(command)
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return {a.option_strings[0]: a for a in sub.choices[command]._actions if a.option_strings}


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_every_field_is_a_flag_naming_its_variable_default_and_accepted_values(
    command: str,
) -> None:
    options = options_of(command)
    fields = attrs.fields_dict(BotConfig)
    for field, (env, help_text) in ENV_VARS.items():
        action = options[flag_name(field)]
        spec = cfg.setting.setting_of(fields[field])
        assert action.dest == f"set_{field}"
        assert action.default is None  # not given: the env, the file or the default decide
        assert action.help.startswith(help_text)
        assert f"default {cfg.default_text(field)}" in action.help
        assert spec.accepts.text in action.help
        assert f"[env {env}" in action.help
    assert options["--handler"].metavar == "{simulate,exec,python}"


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_every_option_shows_its_default(command: str) -> None:
    for option, action in options_of(command).items():
        if option != "-h":
            assert "default" in action.help, option


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_bool_settings_are_plain_switches(command: str) -> None:
    parser = build_parser(command)
    args = parser.parse_args([command, "--concurrency", "4", "--exec-shell"])
    assert (args.set_concurrency, args.set_exec_shell, args.set_failure_rate) == ("4", True, None)
    args = parser.parse_args([command, "--no-exec-shell", "--once"])
    assert (args.set_exec_shell, args.set_once) == (False, True)
    assert parser.parse_args([command]).set_once is None
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--exec-shell", "no"])  # a switch takes no value
    bools = [f.name for f in attrs.fields(BotConfig) if f.type is bool]
    assert sorted(bools) == ["exec_shell", "once"]
    for field in bools:
        assert options_of(command)[flag_name(field)].nargs == 0


def test_switches_and_seconds_reach_the_config() -> None:
    c = load_config(env={}, overrides={"once": True, "disconnect_after_idle": "90"})
    assert (c.once, c.disconnect_after_idle) == (True, 90.0)
    c = load_config(env={"BOT_ONCE": "yes", "BOT_DISCONNECT_AFTER_IDLE": "2.5"})
    assert (c.once, c.disconnect_after_idle) == (True, 2.5)
    assert load_config(env={"BOT_ONCE": "1"}, overrides={"once": False}).once is False
    assert (BotConfig().once, BotConfig().disconnect_after_idle) == (False, None)
    [line] = problems_of(env={"BOT_DISCONNECT_AFTER_IDLE": "0"})
    assert line == "BOT_DISCONNECT_AFTER_IDLE: must be a number of seconds > 0, got 0.0"


# --- unknown variables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "near"),
    [
        ("BOT_CONCURENCY", "BOT_CONCURRENCY"),
        ("BOT_HEARTBEAT_INTERVAL_MS", "HEARTBEAT_INTERVAL_MS"),  # the seed's names count too
        ("BOT_MAIN_SERVER_URL", "MAIN_SERVER_URL"),
        ("BOT_DISCONECT_AFTER_IDLE", "BOT_DISCONNECT_AFTER_IDLE"),
        ("BOT_ZZZZZZZZZZZZZZZ", None),
    ],
)
def test_unknown_bot_variables_name_the_closest_setting(name: str, near: str | None) -> None:
    env = {name: "4", "BOT_CONCURRENCY": "2", "PATH": "/bin", "BOTD_SERVER_TOKEN": "t"}
    assert cfg.unknown_variables(env) == [(name, near)]
    assert load_config(env=env).concurrency == 2  # ignored, not an error


def test_check_config_warns_of_an_unknown_variable_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith("BOT_") or n in ALL_ENV]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BOT_CONCURENCY", "4")
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["concurrency"] == 1  # the typo changed nothing ...
    assert err == (  # ... and says so
        "botd: warning: BOT_CONCURENCY is not a setting and is ignored;"
        " did you mean BOT_CONCURRENCY?\n"
    )


def test_known_and_foreign_variables_are_not_unknown() -> None:
    env = {spec: "x" for spec in ALL_ENV} | {"MAIN_SERVER": "x", "BOTD_X": "y", "bot_id": "z"}
    assert cfg.unknown_variables(env) == []


def test_defaults_from_the_issue() -> None:
    c = load_config(env={})
    assert c == BotConfig()
    assert c.bot_id == cfg.default_bot_id()
    assert (c.main_server_url, c.processing_duration_ms, c.heartbeat_interval_ms) == (
        "http://localhost:3001",
        2000,
        5000,
    )
    assert (c.failure_rate, c.max_startup_attempts) == (0.0, 20)
    assert (c.circuit_breaker_threshold, c.circuit_breaker_timeout) == (5, 30.0)
    assert (c.retry_base_delay, c.retry_max_delay) == (1.0, 60.0)
    assert (c.concurrency, c.handler, c.shutdown_timeout, c.state_dir) == (1, "simulate", 30, None)
    assert (c.ops_addr, c.log_level, c.log_format) == ("127.0.0.1:9317", "INFO", "auto")
    assert (c.claim_wait, c.claim_timeout_margin) == (20.0, 5.0)
    assert (c.token, c.kinds, dict(c.labels)) == (None, (), {})
    assert c.heartbeat_interval_ms == 5000 and c.processing_duration_ms == 2000


def test_empty_env_value_counts_as_unset() -> None:
    assert load_config(env={"FAILURE_RATE": "", "BOT_STATE_DIR": "  "}) == BotConfig()


# --- precedence ------------------------------------------------------------------------


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    file = tmp_path / "bot.toml"
    file.write_text('concurrency = 2\nfailure_rate = 0.25\nlog_level = "debug"\nbot_id = "f"\n')
    env = {"BOT_CONCURRENCY": "3", "FAILURE_RATE": "0.5"}
    c = load_config(env=env, file=file, overrides={"concurrency": 4, "log_level": None})
    assert c.concurrency == 4  # flag beats env beats file
    assert c.failure_rate == 0.5  # env beats file
    assert c.log_level == "DEBUG"  # file beats default; a None flag is "not given"
    assert c.bot_id == "f"
    assert c.retry_max_delay == 60.0  # default


def test_each_source_names_the_variable_as_written(tmp_path: Path) -> None:
    file = tmp_path / "bot.toml"
    file.write_text("failure_rate = 3\n")
    assert problems_of(env={}, file=file) == [
        f"failure_rate (in {file}): must be a number between 0.0 and 1.0, got 3.0"
    ]
    assert problems_of(env={"FAILURE_RATE": "2"}) == [
        "FAILURE_RATE: must be a number between 0.0 and 1.0, got 2.0"
    ]
    assert problems_of(env={}, overrides={"failure_rate": "-1"}) == [
        "--failure-rate: must be a number between 0.0 and 1.0, got -1.0"
    ]


# --- bad config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FAILURE_RATE": "2"}, "FAILURE_RATE: must be a number between 0.0 and 1.0, got 2.0"),
        ({"FAILURE_RATE": "lots"}, "FAILURE_RATE: must be a number between 0.0 and 1.0"),
        ({"FAILURE_RATE": "nan"}, "FAILURE_RATE: must be a number between 0.0 and 1.0"),
        ({"PROCESSING_DURATION_MS": "1.5"}, "PROCESSING_DURATION_MS: must be an integer >= 0"),
        ({"HEARTBEAT_INTERVAL_MS": "0"}, "HEARTBEAT_INTERVAL_MS: must be an integer > 0, got 0"),
        ({"MAX_STARTUP_ATTEMPTS": "0"}, "MAX_STARTUP_ATTEMPTS: must be an integer >= 1"),
        ({"CIRCUIT_BREAKER_TIMEOUT": "-3"}, "CIRCUIT_BREAKER_TIMEOUT: must be a number of sec"),
        ({"BOT_CONCURRENCY": "1001"}, "BOT_CONCURRENCY: must be an integer between 1 and 1000"),
        ({"BOT_HANDLER": "magic"}, "BOT_HANDLER: must be one of simulate, exec, python"),
        ({"MAIN_SERVER_URL": "ftp://x"}, "MAIN_SERVER_URL: must be an http:// or https:// URL"),
        ({"MAIN_SERVER_URL": "localhost:3001"}, "MAIN_SERVER_URL: must be an http:// or https"),
        ({"BOT_OPS_ADDR": "127.0.0.1:70000"}, "BOT_OPS_ADDR: must be host:port with a port"),
        ({"BOT_OPS_ADDR": "9317"}, "BOT_OPS_ADDR: must be host:port"),
        ({"BOT_LOG_FORMAT": "xml"}, "BOT_LOG_FORMAT: must be one of json, text, auto"),
        ({"BOT_CLAIM_WAIT": "31"}, "BOT_CLAIM_WAIT: must be a number of seconds between 0 and 30"),
        ({"BOT_LABELS": "a=1,b"}, "BOT_LABELS: must be comma-separated key=value pairs"),
        ({"BOT_EXEC_COMMAND": "run 'unbalanced"}, "BOT_EXEC_COMMAND: must be a command line"),
        ({"BOT_PYTHON_HANDLER": "mod.func"}, "BOT_PYTHON_HANDLER: must be module:function"),
        ({"BOT_ID": "has space"}, "BOT_ID: must be a non-empty id"),
        ({"BOT_EXEC_SHELL": "maybe"}, "BOT_EXEC_SHELL: must be true or false"),
        ({"RETRY_BASE_DELAY": "2", "RETRY_MAX_DELAY": "1"}, "RETRY_MAX_DELAY: must be >= RETRY"),
        ({"BOT_HANDLER": "exec"}, "BOT_EXEC_COMMAND: required when BOT_HANDLER is exec"),
        ({"BOT_HANDLER": "python"}, "BOT_PYTHON_HANDLER: required when BOT_HANDLER is python"),
    ],
)
def test_bad_values_name_the_variable_and_the_accepted_values(
    env: dict[str, str], expected: str
) -> None:
    problems = problems_of(env=env)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_all_problems_are_collected_at_once(tmp_path: Path) -> None:
    file = tmp_path / "bot.toml"
    file.write_text("concurency = 2\nheartbeat_interval_ms = 'soon'\n")
    problems = problems_of(
        env={"FAILURE_RATE": "2", "BOT_CONCURRENCY": "zero", "BOT_HANDLER": "exec"},
        file=file,
        overrides={"log_level": "loud", "no_such_flag": 1},
    )
    assert len(problems) == 7, problems
    joined = "\n".join(problems)
    for name in (
        "concurency (in",
        "did you mean concurrency?",
        "heartbeat_interval_ms (in",
        "FAILURE_RATE:",
        "BOT_CONCURRENCY:",
        "--log-level:",
        "--no-such-flag: unknown setting",
        "BOT_EXEC_COMMAND: required",
    ):
        assert name in joined


def test_unknown_toml_key_and_bad_toml(tmp_path: Path) -> None:
    file = tmp_path / "bot.toml"
    file.write_text("FAILURE_RATE = 0.1\n")
    assert problems_of(env={}, file=file) == [
        f"FAILURE_RATE (in {file}): unknown setting; did you mean failure_rate?"
    ]
    file.write_text("failure_rate = = 1\n")
    assert problems_of(env={}, file=file)[0].startswith(f"{file}: not valid TOML")
    assert problems_of(env={}, file=tmp_path / "missing.toml")[0].startswith(
        f"{tmp_path / 'missing.toml'}: cannot read the config file"
    )


def test_toml_takes_native_types_lists_and_tables(tmp_path: Path) -> None:
    file = tmp_path / "bot.toml"
    file.write_text(
        'handler = "exec"\nexec_command = ["python3", "-c", "print(1)"]\n'
        'kinds = ["a", "b"]\nexec_shell = true\nstate_dir = "~/botd"\n'
        '[labels]\nzone = "eu"\n'
    )
    c = load_config(env={}, file=file)
    assert c.exec_command == ("python3", "-c", "print(1)")
    assert c.kinds == ("a", "b")
    assert c.exec_shell is True
    assert c.state_dir == Path("~/botd").expanduser()
    assert dict(c.labels) == {"zone": "eu"}


def test_env_strings_for_lists_and_maps() -> None:
    c = load_config(
        env={
            "BOT_HANDLER": "EXEC",
            "BOT_EXEC_COMMAND": "python3 -c 'print(\"hi there\")'",
            "BOT_KINDS": " resize, ,thumbnail ",
            "BOT_LABELS": "zone=eu, gpu = yes ,expr=a=b",
            "BOT_LOG_LEVEL": "trace",
        }
    )
    assert c.handler == "exec"
    assert c.exec_command == ("python3", "-c", 'print("hi there")')
    assert c.kinds == ("resize", "thumbnail")
    assert dict(c.labels) == {"zone": "eu", "gpu": "yes", "expr": "a=b"}
    assert c.log_level == "TRACE"


def test_url_credentials_never_show() -> None:
    c = load_config(env={"MAIN_SERVER_URL": "https://bot:pa55word@example.com/api"})
    assert c.main_server_url == "https://bot:pa55word@example.com/api"
    assert redacted(c)["main_server_url"] == "https://bot:***@example.com/api"
    [line] = problems_of(env={"MAIN_SERVER_URL": "ftp://bot:pa55word@example.com"})
    assert "pa55word" not in line
    assert line.endswith("got 'ftp://bot:***@example.com'")


def test_ops_addr_forms() -> None:
    def bind(env: dict[str, str]) -> tuple[str, int] | None:
        return parse_ops_addr(load_config(env=env).ops_addr)

    assert bind({"BOT_OPS_ADDR": "OFF"}) is None
    assert bind({"BOT_OPS_ADDR": "[::1]:0"}) == ("::1", 0)
    assert bind({}) == ("127.0.0.1", 9317)


# --- secrets and the token file ----------------------------------------------------------


def test_secret_never_shows() -> None:
    s = Secret("hunter2")
    assert repr(s) == str(s) == f"{s}" == "***"
    assert s.reveal() == "hunter2"
    assert s == Secret("hunter2") and s != Secret("other")
    c = load_config(env={"BOT_TOKEN": "hunter2", "FAILURE_RATE": "0.5"})
    assert c.token == s
    assert "hunter2" not in repr(c)
    assert redacted(c)["token"] == "***"
    assert "hunter2" not in json.dumps(redacted(c))
    problems = problems_of(env={"BOT_TOKEN": "hunter2", "FAILURE_RATE": "9"})
    assert "hunter2" not in "".join(problems)


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret\n")
    c = load_config(env={"BOT_TOKEN_FILE": str(token_file)})
    assert c.token is not None and c.token.reveal() == "s3cret"
    assert c.token_file == token_file
    assert "s3cret" not in json.dumps(redacted(c))


def test_token_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    [line] = problems_of(env={"BOT_TOKEN_FILE": str(missing)})
    assert line.startswith(f"BOT_TOKEN_FILE: cannot read the token file {str(missing)!r}")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert problems_of(env={"BOT_TOKEN_FILE": str(empty)}) == [
        f"BOT_TOKEN_FILE: the token file {str(empty)!r} is empty; write the token into it"
    ]
    [both] = problems_of(env={"BOT_TOKEN": "x", "BOT_TOKEN_FILE": str(empty)})
    assert both == "BOT_TOKEN and BOT_TOKEN_FILE: give one of them, not both"


# --- the object itself -----------------------------------------------------------------


def test_direct_construction_validates_and_is_frozen() -> None:
    with pytest.raises(ConfigError, match="failure_rate: must be a number between"):
        BotConfig(failure_rate=2.0)
    with pytest.raises(ConfigError, match="retry_max_delay: must be >= retry_base_delay"):
        BotConfig(retry_base_delay=5.0, retry_max_delay=1.0)
    c = BotConfig(labels={"a": "b"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.concurrency = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.labels["a"] = "c"  # type: ignore[index]


def test_redacted_is_json_and_complete() -> None:
    c = load_config(env={"BOT_STATE_DIR": "/var/lib/botd", "BOT_KINDS": "a"})
    data = json.loads(json.dumps(redacted(c)))
    assert set(data) == set(ENV_VARS)
    assert data["state_dir"] == "/var/lib/botd"
    assert data["kinds"] == ["a"]


# --- hypothesis: the bool hook, junk never crashes, round trips --------------------------


def _cases(word: str) -> st.SearchStrategy[str]:
    return st.tuples(
        st.lists(st.booleans(), min_size=len(word), max_size=len(word)),
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(["", " ", "\n"]),
    ).map(
        lambda t: (
            t[1] + "".join(c.upper() if u else c for c, u in zip(word, t[0], strict=False)) + t[2]
        )
    )


@given(st.sampled_from(["false", "0", "no", "off"]).flatmap(_cases))
def test_env_bool_false_words(text: str) -> None:
    assert load_config(env={"BOT_EXEC_SHELL": text}).exec_shell is False


@given(st.sampled_from(["true", "1", "yes", "on"]).flatmap(_cases))
def test_env_bool_true_words(text: str) -> None:
    assert load_config(env={"BOT_EXEC_SHELL": text}).exec_shell is True


@given(
    st.text(min_size=1).filter(
        lambda t: t.strip() and t.strip().lower() not in codec._TRUE | codec._FALSE
    )
)
def test_env_bool_garbage_is_a_problem_naming_the_variable(text: str) -> None:
    [line] = problems_of(env={"BOT_EXEC_SHELL": text})
    assert line.startswith("BOT_EXEC_SHELL: must be true or false")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(ALL_ENV)), st.text(max_size=30), max_size=8))
def test_any_env_text_gives_a_config_or_named_problems(env: dict[str, str]) -> None:
    env.pop("BOT_TOKEN_FILE", None)  # that one reads a file; tested above
    env["BOT_TOKEN"] = "zz-SECRET-zz"
    problems: list[str] = []
    try:
        load_config(env=env)
    except ConfigError as exc:
        problems = exc.problems
        assert problems
    for line in problems:
        assert any(line.startswith(name) for name in ALL_ENV), line
        assert "zz-SECRET-zz" not in line


ident = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
pos = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)


@st.composite
def configs(draw: st.DrawFn) -> BotConfig:
    handler = draw(st.sampled_from(["simulate", "exec", "python"]))
    base = draw(pos)
    return BotConfig(
        bot_id=draw(ident),
        main_server_url=draw(st.sampled_from(["http://h:1", "https://example.com/api"])),
        processing_duration_ms=draw(st.integers(0, 10**9)),
        heartbeat_interval_ms=draw(st.integers(1, 10**9)),
        failure_rate=draw(st.floats(0.0, 1.0)),
        max_startup_attempts=draw(st.integers(1, 10**6)),
        circuit_breaker_threshold=draw(st.integers(1, 1000)),
        circuit_breaker_timeout=draw(pos),
        circuit_breaker_jitter=draw(st.floats(0.0, 0.99)),
        retry_base_delay=base,
        retry_max_delay=base + draw(st.floats(0.0, 1e6)),
        concurrency=draw(st.integers(1, 1000)),
        handler=handler,
        exec_command=tuple(
            draw(st.lists(st.text(min_size=0, max_size=8), min_size=handler == "exec"))
        ),
        exec_shell=draw(st.booleans()),
        exec_kill_grace=draw(st.floats(0.0, 100.0)),
        python_handler=draw(st.sampled_from(["pkg.mod:run", "m:f_2"]))
        if handler == "python"
        else draw(st.none() | st.just("a:b")),
        job_timeout=draw(pos),
        shutdown_timeout=draw(st.floats(0.0, 1e4)),
        cleanup_timeout=draw(pos),
        once=draw(st.booleans()),
        disconnect_after_idle=draw(st.none() | pos),
        state_dir=draw(st.none() | ident.map(lambda s: Path("/tmp") / s)),
        token=draw(st.none() | st.text(string.printable.strip(), min_size=1).map(Secret)),
        ops_addr=draw(st.sampled_from(["off", "0.0.0.0:0", "[::1]:65535", "localhost:9317"])),
        log_level=draw(st.sampled_from(["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"])),
        log_format=draw(st.sampled_from(["json", "text", "auto"])),
        connect_timeout=draw(pos),
        request_timeout=draw(pos),
        claim_wait=draw(st.floats(0.0, 30.0)),
        claim_timeout_margin=draw(pos),
        kinds=tuple(draw(st.lists(ident, max_size=4))),
        labels=draw(st.dictionaries(ident, ident, max_size=4)),
        outbox_max=draw(st.integers(1, 10**7)),
        health_interval=draw(pos),
        health_check_timeout=draw(pos),
        register_timeout=draw(pos),
        error_timeout=draw(pos),
        transition_history=draw(st.integers(1, 10**4)),
    )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_env_round_trip(c: BotConfig) -> None:
    assert load_config(env=to_env(c, secrets=True)) == c
    without = load_config(env=to_env(c))
    assert without.token is None
    assert attrs.evolve(without, token=c.token) == c


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_overrides_round_trip_with_typed_values(c: BotConfig) -> None:
    flags = {f.name: getattr(c, f.name) for f in attrs.fields(BotConfig)}
    flags["labels"] = dict(c.labels)
    assert load_config(env={"FAILURE_RATE": "7"}, overrides=flags) == c


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_redacted_round_trips_except_secrets(c: BotConfig) -> None:
    data = {k: v for k, v in redacted(c).items() if v is not None and k != "token"}
    assert load_config(env={}, overrides=data) == attrs.evolve(c, token=None)
