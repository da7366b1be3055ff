"""``crmsync.toml`` read into pydantic models.

Every table is validated; an error names the key (``lists[1].members``) and says what
is expected. Secrets are never read from the TOML: connector secrets come from
``CRMSYNC_<CONNECTOR>_<FIELD>``, the file-space password from ``CRMSYNC_FILES_PASSWORD``,
a post-operation's signing key from its ``secret_env``: each looked up in
:meth:`Config.secrets` (the environment first, then the secrets file, parsed once by
:func:`load_config`; the process environment is never written).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .contract import format_validation_error
from .errors import ConfigError
from .model import Status
from .secrets import Secrets, read_secrets_file

__all__ = [
    "PAIR_FILE",
    "Config",
    "ConsentConfig",
    "ConsoleConfig",
    "FilesConfig",
    "GroupMapping",
    "LedgerConfig",
    "ListMapping",
    "LoggingConfig",
    "MetricsConfig",
    "PairConfig",
    "PostOperation",
    "Secrets",
    "ServerConfig",
    "SideConfig",
    "StateConfig",
    "SyncConfig",
    "load_config",
    "load_pairs",
    "pair_name",
    "pair_names",
    "read_secrets_file",
]

#: The pair of a deployment with one ``crmsync.toml`` (and of everything before pairs).
DEFAULT_PAIR = "default"
#: A many-pairs deployment: one folder per pair, each with this file (``pairs/acme/...``).
PAIR_FILE = "crmsync.toml"
_PAIR_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")

_MEMBERS = re.compile(r"^(all|(campaign|target_list|membership):\S+|field:[^=\s]+=.*)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class StateConfig(_Strict):
    """Where the state store lives: a SQLite file by default, PostgreSQL by URL."""

    url: str = "sqlite:///crmsync.db"


class SideConfig(_Strict):
    """One side of the sync: a connector name and its settings table."""

    connector: str
    settings: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["api", "files"] = "api"


class GroupMapping(_Strict):
    """Which CRM field's values become groups of the list."""

    field: str
    separator: str = ";"
    only: list[str] | None = None  # keep just these values, when given


class ListMapping(_Strict):
    """Which CRM construct feeds one ESP list, and what carries its status and groups.

    ``members``: ``all``, ``campaign:<id>``, ``target_list:<id>``, ``membership:<key>``
    or ``field:<name>=<value>``. ``opt_out``: a CRM field whose true value means
    unsubscribed. ``status``: raw membership status -> subscribed / unsubscribed / pending.
    """

    name: str
    esp_list: str
    members: str = "all"
    opt_out: str | None = None
    status: dict[str, Status] = Field(default_factory=dict)
    groups: GroupMapping | None = None

    _coerce = field_validator("esp_list", mode="before")(_as_str)

    @field_validator("members")
    @classmethod
    def _members(cls, value: str) -> str:
        if not _MEMBERS.match(value):
            raise ValueError(
                "expected all, campaign:<id>, target_list:<id>, membership:<key> "
                f"or field:<name>=<value>, got {value!r}"
            )
        return value

    @property
    def membership_key(self) -> str | None:
        """The CRM construct key (``campaign:701...``) when membership feeds the list."""
        if self.members.split(":", 1)[0] in ("campaign", "target_list", "membership"):
            kind, _, ident = self.members.partition(":")
            return ident if kind == "membership" else f"{kind}:{ident}"
        return None

    @property
    def member_field(self) -> tuple[str, str] | None:
        if self.members.startswith("field:"):
            name, _, value = self.members[len("field:"):].partition("=")
            return name, value
        return None


class PostOperation(_Strict):
    """A rule run after a status change: cascade an unsubscribe, or call a URL."""

    on: Literal["unsubscribe", "subscribe"] = "unsubscribe"
    from_list: str | None = None  # None = any list
    unsubscribe_from: list[str] | Literal["all"] | None = None
    call_url: str | None = None
    method: Literal["POST", "GET"] = "POST"
    secret_env: str | None = None
    retries: int = 3
    timeout_s: float = 10.0

    _coerce = field_validator("from_list", mode="before")(_as_str)

    @field_validator("unsubscribe_from", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(item) for item in value]
        return value

    @model_validator(mode="after")
    def _one_action(self) -> PostOperation:
        if (self.unsubscribe_from is None) == (self.call_url is None):
            raise ValueError("give exactly one of unsubscribe_from or call_url")
        if self.call_url and not re.match(r"^https?://", self.call_url):
            raise ValueError(f"call_url must be an http(s) URL, got {self.call_url!r}")
        return self

    def secret(self, secrets: Mapping[str, str] | None = None) -> SecretStr | None:
        """The signing key, looked up in ``secrets`` (:meth:`Config.secrets`; default:
        the environment alone)."""
        if not self.secret_env:
            return None
        value = (Secrets() if secrets is None else secrets).get(self.secret_env)
        if not value:
            raise ConfigError(
                f"post-operation calling {self.call_url} signs with ${self.secret_env}, "
                "which is not set: set it in the environment or the secrets file"
            )
        return SecretStr(value)


class ConsentConfig(_Strict):
    """The consent policy. Unsubscribes are sticky unless an explicit newer opt-in."""

    resubscribe: Literal["never", "explicit_newer"] = "never"
    deletes: Literal["unsubscribe", "delete", "ignore"] = "unsubscribe"


class FilesConfig(_Strict):
    """The file space of batch mode (``file://``, ``ftp://``, ``ftps://``, ``sftp://``)."""

    url: str = "file://./exchange"
    username: str | None = None
    import_dir: str = "in"
    export_dir: str = "out"
    archive_dir: str = "archive"
    zip: bool = False
    timeout_s: float = 30.0
    ca_file: str | None = None  # CA bundle to verify an FTPS server (default: system store)
    # the SFTP server's host key must be listed here (OpenSSH's known_hosts format)
    known_hosts: str = "~/.ssh/known_hosts"
    # an export is read once its size and time stayed the same for this long
    stable_s: float = Field(5.0, ge=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not re.match(r"^(file|ftp|ftps|sftp)://", value):
            raise ValueError(f"expected a file://, ftp://, ftps:// or sftp:// URL, got {value!r}")
        return value

    def password(self, secrets: Mapping[str, str] | None = None) -> SecretStr | None:
        """``CRMSYNC_FILES_PASSWORD`` looked up in ``secrets`` (:meth:`Config.secrets`;
        default: the environment alone)."""
        value = (Secrets() if secrets is None else secrets).get("CRMSYNC_FILES_PASSWORD")
        return SecretStr(value) if value else None


class SyncConfig(_Strict):
    """Tuning of a batch run."""

    overlap_s: float = 600.0
    batch_size: int = Field(200, ge=1, le=10_000)
    report_dir: str = "reports"
    # The share of a membership-fed list's holders one run may unsubscribe because the
    # CRM no longer lists them as members (more than 10 people): above it the removals
    # are not applied and the run reports it, since a short answer from the CRM would
    # otherwise unsubscribe a whole list. 1.0 lets a deliberate mass removal through.
    max_removal_share: float = Field(0.5, ge=0.0, le=1.0)


class ServerConfig(_Strict):
    """``crmsync serve``: where to listen and how to authenticate inbound calls.

    Endpoint secrets never come from here: ``CRMSYNC_HOOK_SECRET_ESP`` /
    ``CRMSYNC_HOOK_SECRET_CRM`` (required for that side's endpoint to exist),
    ``CRMSYNC_HOOK_SIGNING_KEY_ESP`` / ``_CRM`` (when set, an HMAC-SHA256 signature of
    the body is required in ``signature_header``), ``CRMSYNC_SEND_TOKEN`` (enables
    ``POST /send``) and ``CRMSYNC_FORM_SECRET`` (signs the form's CSRF tokens).
    """

    listen: str = "127.0.0.1:8080"
    poll_interval_s: float = 30.0
    allow_ips: list[str] = Field(default_factory=list)
    max_body_bytes: int = 1_000_000
    max_attempts: int = 8
    # "auto": poll a CRM that cannot push; "always": poll even one that pushes.
    poll: Literal["auto", "always", "never"] = "auto"
    retry_base_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    batch_size: int = Field(50, ge=1, le=1000)
    intake_threads: int = Field(8, ge=1, le=256)  # threads decoding and storing events
    signature_header: str = "X-Crmsync-Signature"
    # Proxies whose X-Forwarded-For is believed when checking allow_ips.
    trusted_proxies: list[str] = Field(default_factory=list)
    form: bool = True
    form_title: str = "Subscribe"
    form_confirm: bool = True  # the ESP's confirmation email (double opt-in)
    form_rate_per_minute: int = Field(10, ge=0)  # form posts per client address; 0 = no limit
    shutdown_timeout_s: float = Field(30.0, ge=0)
    # Applied events are kept this long, so that a late redelivery is still recognised.
    inbox_keep_days: float = Field(7.0, gt=0)
    # /readyz answers 503 once the CRM poller has failed this many times in a row
    ready_poll_failures: int = Field(3, ge=1)

    @field_validator("allow_ips", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value


class ConsoleConfig(_Strict):
    """The operator's web console at ``/admin`` (``crmsync serve``, ``crmsync console``).

    It exists only when an operator password is set: ``CRMSYNC_CONSOLE_PASSWORD_HASH``
    (``crmsync console --hash-password`` makes one) or ``CRMSYNC_CONSOLE_PASSWORD``, in
    the environment or the secrets file, never here.
    """

    listen: str = "127.0.0.1:8081"  # `crmsync console` only; `serve` uses [server] listen
    session_hours: float = Field(8.0, gt=0)
    # after this many wrong passwords in a row from one address, it waits lockout_s,
    # doubled at each further wrong password (at most an hour)
    max_failures: int = Field(5, ge=1)
    lockout_s: float = Field(30.0, ge=0)


class LoggingConfig(_Strict):
    """How crmsync logs (``--log-format`` and ``--mask-emails`` override these)."""

    format: Literal["text", "json"] = "text"
    # None: masked in JSON (what goes to a log pipeline), shown in text (a terminal)
    mask_emails: bool | None = None


class MetricsConfig(_Strict):
    """Where a batch run leaves its metrics (Prometheus text format); both optional."""

    # a file for node_exporter's textfile collector (written whole, then renamed)
    textfile: str | None = None
    # a Pushgateway URL (http://pushgateway:9091): the run's metrics are pushed there
    pushgateway: str | None = None
    job: str = "crmsync"

    @field_validator("pushgateway")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://", value):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value


class LedgerConfig(_Strict):
    """The consent ledger's key (pseudonyms and the journal's hash chain).

    The key is ``CRMSYNC_LEDGER_KEY`` (environment or secrets file) when set, else the
    content of ``key_file``, which crmsync creates (mode 0600) on first use.
    """

    key_file: str = ".crmsync.ledger-key"


class ScheduleConfig(_Strict):
    """What ``crmsync worker`` processes (PostgreSQL) start on a schedule, once each time
    however many workers run (``crmsync schedule`` shows it). The embedded default
    schedules ``crmsync sync`` with cron / systemd timers instead (docs/batch.md)."""

    # cron, UTC, five fields ("0 2 * * *": 02:00 every night), or six with seconds last
    batch: str | None = None
    batch_full: bool = False  # each scheduled run reads every CRM contact (`sync --full`)
    # workers poll the CRM every [server] poll_interval_s when [server] poll says so
    poll: bool = True


class PairConfig(_Strict):
    """This file as one pair of a many-pairs deployment (``crmsync --pairs DIR``): the
    pair's name is its folder's. Its secrets are read from the environment under
    ``secrets_prefix`` (default ``CRMSYNC_<NAME>_``: ``CRMSYNC_ACME_MAILUP_PASSWORD``),
    or from its own ``secrets_file`` under their plain names."""

    secrets_prefix: str | None = None

    @field_validator("secrets_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Z][A-Z0-9_]*_$", value):
            raise ValueError("expected capitals, digits and underscores ending in _, "
                             f"e.g. CRMSYNC_ACME_, got {value!r}")
        return value


def pair_name(value: str) -> str:
    """A pair's name as given (a folder of ``pairs/``, ``--pair``), checked."""
    if not _PAIR_NAME.match(value):
        raise ConfigError(f"pair name {value!r}: use lower-case letters, digits, - and _ "
                          "(at most 40, starting with a letter or digit)")
    return value


class Config(_Strict):
    """The whole of ``crmsync.toml``."""

    state: StateConfig = StateConfig()
    crm: SideConfig | None = None
    esp: SideConfig | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    lists: list[ListMapping] = Field(default_factory=list)
    post_operations: list[PostOperation] = Field(default_factory=list)
    consent: ConsentConfig = ConsentConfig()
    files: FilesConfig = FilesConfig()
    sync: SyncConfig = SyncConfig()
    server: ServerConfig = ServerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    console: ConsoleConfig = ConsoleConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    ledger: LedgerConfig = LedgerConfig()
    pair: PairConfig = PairConfig()
    secrets_file: str | None = None
    base_dir: str = "."  # the folder of the config file; relative paths are from there
    _secrets: Secrets | None = PrivateAttr(default=None)
    _pair: str = PrivateAttr(default=DEFAULT_PAIR)

    def secrets(self) -> Secrets:
        """Every secret by name: the environment first, then the secrets file (as read
        by :func:`load_config`); a named pair's environment under its prefix."""
        if self._secrets is not None:
            return self._secrets
        return Secrets(env_prefix=self.secrets_prefix())

    @property
    def pair_name(self) -> str:
        """The pair this configuration is: its folder's name under ``--pairs``, else
        ``default``."""
        return self._pair

    def secrets_prefix(self) -> str:
        """Where this pair's secrets are in the environment (``CRMSYNC_`` alone for the
        default pair)."""
        if self._pair == DEFAULT_PAIR:
            return "CRMSYNC_"
        return self.pair.secrets_prefix or f"CRMSYNC_{self._pair.upper().replace('-', '_')}_"

    def for_pair(self, name: str) -> Config:
        """This configuration as pair ``name`` (its secrets prefix, its state schema)."""
        config = self.model_copy()
        config._pair = pair_name(name)
        return config

    def selector(self, path: Path) -> list[str]:
        """The ``crmsync`` options that select this configuration (at ``path``) again, in
        a child process: ``--config PATH``, or a named pair's ``--pairs DIR --pair NAME``
        (its secrets prefix and state schema come with its name)."""
        if self._pair == DEFAULT_PAIR:
            return ["--config", str(path)]
        return ["--pairs", str(Path(path).resolve().parent.parent), "--pair", self._pair]

    def state_schema(self, url: str | None = None) -> str | None:
        """The PostgreSQL schema of this pair's state at ``url`` (default: [state] url;
        None: the database's default, as before pairs). Pairs may share one database:
        each has its own schema."""
        if self._pair == DEFAULT_PAIR or not (url or self.state_url()).startswith("postgresql"):
            return None
        return "crmsync_" + self._pair.replace("-", "_")

    @model_validator(mode="after")
    def _unique_lists(self) -> Config:
        seen = [item.esp_list for item in self.lists]
        dupes = sorted({item for item in seen if seen.count(item) > 1})
        if dupes:
            raise ValueError(f"esp_list {', '.join(dupes)} mapped more than once in [[lists]]")
        return self

    def path(self, value: str) -> Path:
        candidate = Path(value)
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate

    def state_url(self) -> str:
        url = self.state.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url[len("sqlite:///"):]
            if rel and rel != ":memory:":
                return "sqlite:///" + str(self.path(rel).resolve())
        return url

    def list_ids(self) -> tuple[str, ...]:
        return tuple(item.esp_list for item in self.lists)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None,
                pair: str | None = None) -> Config:
    """Read and validate ``crmsync.toml``; a missing file is a clear ``ConfigError``.

    The secrets file is read here, once, into :meth:`Config.secrets`, where ``environ``
    (default: the process environment, only read) wins over it. ``pair``: the file is
    that pair of a many-pairs deployment (its secrets prefix, its state schema)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"no configuration at {path}: run `crmsync init --connector NAME` to write one, "
            "or pass --config PATH"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte "
                          f"0x{exc.object[exc.start]:02x}): save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    raw.setdefault("base_dir", str(path.parent.resolve()))
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path} is invalid:\n{format_validation_error(exc)}") from None
    if pair is not None:
        config._pair = pair_name(pair)
    prefix = config.secrets_prefix()
    if config.secrets_file:
        secrets = config.path(config.secrets_file)
        if not secrets.exists():
            raise ConfigError(f"secrets_file {secrets} does not exist: create it or remove the key")
        config._secrets = Secrets(read_secrets_file(secrets), environ, env_prefix=prefix)
    elif environ is not None or pair is not None:
        config._secrets = Secrets({}, environ, env_prefix=prefix)
    return config


def pair_names(folder: str | Path) -> list[str]:
    """The pairs of a many-pairs deployment's folder, by name (sorted), unread."""
    return sorted(path.parent.name for path in Path(folder).glob(f"*/{PAIR_FILE}"))


def load_pairs(folder: str | Path, *, environ: Mapping[str, str] | None = None,
               only: str | None = None) -> dict[str, Config]:
    """Every pair of a many-pairs deployment: ``folder/<name>/crmsync.toml`` each, by
    name (sorted); ``only``: just that one. Each pair's relative paths (its state file,
    file space, reports, secrets file, ledger key) are from its own folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--pairs {folder}: no such folder: make one with a folder per "
                          f"pair, each holding its {PAIR_FILE} (docs/scale-out.md)")
    if only is not None:
        path = folder / pair_name(only) / PAIR_FILE
        if not path.exists():
            known = ", ".join(pair_names(folder))
            raise ConfigError(f"--pair {only}: there is no {path} (pairs in {folder}: "
                              f"{known or 'none'})")
        return {only: load_config(path, environ=environ, pair=only)}
    pairs: dict[str, Config] = {}
    seen: dict[str, str] = {}
    for name in map(pair_name, pair_names(folder)):
        path = folder / name / PAIR_FILE
        config = load_config(path, environ=environ, pair=name)
        for key, what in ((config.secrets_prefix(), "secrets prefix"),
                          ("schema:" + name.replace("-", "_"), "state schema")):
            if key in seen:
                raise ConfigError(f"pairs {seen[key]} and {name} share the {what} "
                                  f"{key.removeprefix('schema:')}: rename one, or give it "
                                  "its own [pair] secrets_prefix")
            seen[key] = name
        pairs[name] = config
    if not pairs:
        raise ConfigError(f"--pairs {folder}: no pair in it: make {folder}/<name>/"
                          f"{PAIR_FILE} for each pair")
    return pairs
