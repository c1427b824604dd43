//! ZooKeeper: the rate store at `{root}/rates/{C}` (decimal strings), and the
//! watch-fed rate feed the dataflow listens to (docs/DESIGN.md, "Time and rates").

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use model::{Config, Currency, Decimal};
use zookeeper_client as zk;

pub use zk::Client;

mod modifier;
mod modifier_metrics;
pub use modifier::{bounds, cas_update, run_modifier, step, ModifierOptions, RATE_DP};
pub use modifier_metrics::render_metrics as render_modifier_metrics;

/// Rates of every configured currency, in `Currencies::all` order.
pub type Rates = Vec<(Currency, Decimal)>;

pub fn rates_path(cfg: &Config) -> String {
    format!("{}/rates", cfg.zookeeper.root)
}

fn rate_path(cfg: &Config, c: Currency) -> String {
    format!("{}/rates/{c}", cfg.zookeeper.root)
}

/// Check an injected rate (`PUT /api/rates/{CUR}`, `dtss rates set`): a
/// configured currency other than the base, a positive decimal of at most 6 decimals.
/// The error names the field: `currency` or `rate`.
pub fn parse_injection(
    cfg: &Config,
    currency: &str,
    rate: &str,
) -> Result<(Currency, Decimal), model::FieldError> {
    let err = |field: &str, problem: String| model::FieldError {
        field: field.into(),
        problem,
    };
    let c: Currency = currency
        .parse()
        .ok()
        .filter(|c| cfg.currencies.all.contains(c))
        .ok_or_else(|| {
            err(
                "currency",
                format!("{currency:?} is not a configured currency"),
            )
        })?;
    if c == cfg.currencies.base {
        return Err(err(
            "currency",
            format!("{c} is the base currency: its rate is fixed"),
        ));
    }
    let r = parse_rate(cfg, c, rate)?;
    Ok((c, r))
}

/// The one rule for a rate of `c`, wherever it is read or written (`PUT /api/rates`, the
/// modifier, the worker reading ZooKeeper): a plain positive decimal of at most
/// `RATE_DP` decimals (so `rate_history` holds it exactly) within `c`'s hard range; the
/// base currency's is 1. The error names the field `rate`.
pub fn parse_rate(cfg: &Config, c: Currency, rate: &str) -> Result<Decimal, model::FieldError> {
    let err = |problem: String| model::FieldError {
        field: "rate".into(),
        problem,
    };
    let plain = !rate.is_empty()
        && rate.len() <= 40
        && rate.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && rate.bytes().filter(|b| *b == b'.').count() <= 1;
    let r = Decimal::from_str(rate)
        .ok()
        .filter(|_| plain)
        .ok_or_else(|| err(format!("{rate:?} is not a plain decimal number like 7.12")))?;
    if r <= Decimal::ZERO {
        return Err(err(format!("{rate} must be positive")));
    }
    if r.scale() > modifier::RATE_DP {
        return Err(err(format!(
            "{rate} has more than {} decimals",
            modifier::RATE_DP
        )));
    }
    if c == cfg.currencies.base {
        return match r == Decimal::ONE {
            true => Ok(r),
            false => Err(err(format!("{rate}: the base currency {c}'s rate is 1"))),
        };
    }
    let (lo, hi) = hard_range(cfg, c);
    if r < lo || r > hi {
        return Err(err(format!(
            "{rate} is outside {c}'s hard range {lo} to {hi} (currencies.hard_factor {} of its initial rate)",
            cfg.currencies.hard_factor
        )));
    }
    Ok(r)
}

/// A table read from ZooKeeper, checked as `PUT /api/rates` checks one rate
/// (`parse_rate`, then `check_payable` against the catalogue's dearest prices):
/// nothing read there is trusted. Err says which rate fails and why. The payable check
/// refuses a table only where the table in force (`in_force`, else the initial rates)
/// passes it: with a catalogue so dear that no table can pass, orders past what a result
/// holds are dead letters instead.
pub fn check_table(
    cfg: &Config,
    read: &[(Currency, String)],
    max_prices: &[(String, Decimal)],
    in_force: Option<&Rates>,
) -> Result<Rates, String> {
    let mut table = Rates::new();
    for (c, text) in read {
        let r = parse_rate(cfg, *c, text.trim()).map_err(|e| format!("{c}: {}", e.problem))?;
        table.push((*c, r));
    }
    let payable = |t: &Rates| -> Result<(), String> {
        let Some((c, r)) = t.last().copied() else {
            return Ok(());
        };
        let all: Vec<(Currency, Decimal, i32)> = t.iter().map(|&(k, r)| (k, r, 0)).collect();
        check_payable(max_prices, &all, c, r).map_err(|e| e.problem)
    };
    let reference = in_force
        .cloned()
        .unwrap_or_else(|| cfg.currencies.initial.clone());
    if payable(&reference).is_ok() {
        payable(&table)?;
    }
    Ok(table)
}

/// The rates `c` may be set to: within `currencies.hard_factor` of its initial rate.
pub fn hard_range(cfg: &Config, c: Currency) -> (Decimal, Decimal) {
    let initial = initial_rate(cfg, c);
    let f = cfg.currencies.hard_factor;
    let lo = (initial / f).round_dp_with_strategy(
        modifier::RATE_DP,
        rust_decimal::RoundingStrategy::ToPositiveInfinity,
    );
    (lo.max(Decimal::new(1, modifier::RATE_DP)), initial * f)
}

/// Whether setting `c` to `rate` (the other rates as `current`) leaves every order within
/// ingest's limits payable and storable (`model::payable`), given the catalogue's dearest
/// price per currency. The error names the field `rate`.
pub fn check_payable(
    max_prices: &[(String, Decimal)],
    current: &[(Currency, Decimal, i32)],
    c: Currency,
    rate: Decimal,
) -> Result<(), model::FieldError> {
    let prices: Vec<(Currency, Decimal)> = max_prices
        .iter()
        .filter_map(|(k, p)| Some((k.parse().ok()?, *p)))
        .collect();
    let mut rates: Vec<(Currency, Decimal)> = current
        .iter()
        .filter(|(k, ..)| *k != c)
        .map(|(k, r, _)| (*k, *r))
        .collect();
    rates.push((c, rate));
    model::payable(&prices, &rates).map_err(|worst| model::FieldError {
        field: "rate".into(),
        problem: match worst {
            Some(w) => format!(
                "with {c} at {rate} an order within the limits could pay {w}, past what a \
                 result holds (below 10^22)"
            ),
            None => format!("with {c} at {rate} an order's amount would overflow"),
        },
    })
}

/// Write an injected rate (compare-and-set on the znode version).
pub async fn inject(client: &Client, cfg: &Config, c: Currency, rate: Decimal) -> Result<i32> {
    Ok(cas_update(client, cfg, c, |_| rate).await?.1)
}

/// Connect to the configured ensemble, retrying for up to `patience`.
pub async fn connect(cfg: &Config, patience: Duration) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let attempt = Client::connector()
            .with_session_timeout(cfg.zookeeper.session_timeout)
            .with_connection_timeout(Duration::from_secs(2))
            .connect(&cfg.zookeeper.connect)
            .await;
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("ZooKeeper {} not reachable yet: {e}", cfg.zookeeper.connect);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot reach ZooKeeper at {} (zookeeper.connect): is it running? (dtss services up)",
                        cfg.zookeeper.connect
                    )
                })
            }
        }
    }
}

/// Create `{root}/rates/{C}` with the configured initial rate for every currency that
/// has no node yet. Existing rates are left as they are.
pub async fn seed_rates(client: &Client, cfg: &Config) -> Result<()> {
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client
        .mkdir(&rates_path(cfg), &opts)
        .await
        .with_context(|| format!("creating {}", rates_path(cfg)))?;
    for (c, rate) in cfg.currencies.initial.clone() {
        match client
            .create(&rate_path(cfg, c), rate.to_string().as_bytes(), &opts)
            .await
        {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", rate_path(cfg, c))),
        }
    }
    Ok(())
}

/// One currency's rate as ZooKeeper holds it: the text, the znode version, and the rate
/// if it passes the rule (`parse_rate`), else why not.
pub struct StoredRate {
    pub currency: Currency,
    pub text: String,
    pub version: i32,
    pub rate: Result<Decimal, String>,
}

/// Every configured currency's rate as stored, each checked against the rule.
pub async fn read_stored(client: &Client, cfg: &Config) -> Result<Vec<StoredRate>> {
    let mut out = vec![];
    for c in cfg.currencies.all.clone() {
        let path = rate_path(cfg, c);
        let (data, stat) = client
            .get_data(&path)
            .await
            .with_context(|| format!("reading {path}"))?;
        let text = String::from_utf8_lossy(&data[..data.len().min(64)]).into_owned();
        let rate = parse_rate(cfg, c, text.trim()).map_err(|e| e.problem);
        out.push(StoredRate {
            currency: c,
            text,
            version: stat.version,
            rate,
        });
    }
    Ok(out)
}

/// Read every configured currency's rate, with each znode's version. A stored rate that
/// fails the rule (written past `PUT /api/rates`) counts as the currency's initial rate,
/// as it does for the rate modifier, and is logged.
pub async fn read_rates(client: &Client, cfg: &Config) -> Result<Vec<(Currency, Decimal, i32)>> {
    let stored = read_stored(client, cfg).await?;
    Ok(stored
        .into_iter()
        .map(|s| {
            let rate = s.rate.unwrap_or_else(|why| {
                let initial = initial_rate(cfg, s.currency);
                tracing::warn!(
                    "{}: {:?} fails the rule ({why}); counting it as {initial}",
                    rate_path(cfg, s.currency),
                    s.text
                );
                initial
            });
            (s.currency, rate, s.version)
        })
        .collect())
}

/// `c`'s configured initial rate (1 where none is configured: the base).
pub fn initial_rate(cfg: &Config, c: Currency) -> Decimal {
    cfg.currencies
        .initial
        .iter()
        .find(|(k, _)| *k == c)
        .map_or(Decimal::ONE, |(_, r)| *r)
}

/// Follow the rates with a persistent recursive watch and call `on_change` with the
/// full table whenever it differs from the last one delivered (and once at start).
/// After any reconnect the session and the watch are set up afresh and every rate is
/// read again, so a change made while the client was away is not missed. Runs on its own
/// thread until `on_change` returns false.
///
/// Every table is checked (`check_table`, against `max_prices`, the catalogue's dearest
/// price per currency) before it is delivered: one that fails is refused (logged, and
/// counted in `refused_tables`), and the table delivered last stays in force.
pub fn spawn_rate_feed(
    cfg: Config,
    max_prices: Vec<(String, Decimal)>,
    mut on_change: impl FnMut(Rates) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    ore::spawn_on_runtime("rate-feed", move || async move {
        let mut last: Option<Rates> = None;
        loop {
            match follow(&cfg, &max_prices, &mut last, &mut on_change).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("rate feed lost ZooKeeper, reconnecting: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

/// How many tables read from ZooKeeper were refused (`check_table`) by this process.
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many rate tables read from ZooKeeper this process refused, and why the last was.
pub fn refused_tables() -> (u64, Option<String>) {
    let why = LAST_REFUSAL.lock().map(|w| w.clone()).unwrap_or(None);
    (REFUSED.load(std::sync::atomic::Ordering::Relaxed), why)
}

static LAST_REFUSAL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

async fn follow(
    cfg: &Config,
    max_prices: &[(String, Decimal)],
    last: &mut Option<Rates>,
    on_change: &mut impl FnMut(Rates) -> bool,
) -> Result<()> {
    let client = connect(cfg, Duration::from_secs(3600)).await?;
    let mut watcher = client
        .watch(&rates_path(cfg), zk::AddWatchMode::PersistentRecursive)
        .await
        .context("watching rates")?;
    if !deliver(
        read_checked(&client, cfg, max_prices, last).await?,
        last,
        on_change,
    ) {
        return Ok(());
    }
    loop {
        let ev = watcher.changed().await;
        match ev.event_type {
            zk::EventType::Session => match ev.session_state {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    // A persistent watch is not reliably re-registered after a reconnect
                    // (ZOOKEEPER-4698; seen here when an ensemble member dies): start over
                    // with a fresh session and watch, then re-read every rate.
                    bail!("connection to ZooKeeper was lost and regained; renewing the session and the watch");
                }
                zk::SessionState::Disconnected => continue,
                other => bail!("ZooKeeper session ended: {other:?}"),
            },
            zk::EventType::NodeDeleted => {
                tracing::warn!("rate node {} was deleted; keeping the last rate", ev.path);
                continue;
            }
            _ => {}
        }
        // A failed read goes back to reconnecting, which reads every rate afresh.
        if !deliver(
            read_checked(&client, cfg, max_prices, last).await?,
            last,
            on_change,
        ) {
            return Ok(());
        }
    }
}

/// Every rate as stored, checked against the table in force (`check_table`): None when
/// the table is refused (logged and counted).
async fn read_checked(
    client: &Client,
    cfg: &Config,
    max_prices: &[(String, Decimal)],
    in_force: &Option<Rates>,
) -> Result<Option<Rates>> {
    let texts: Vec<(Currency, String)> = read_stored(client, cfg)
        .await?
        .into_iter()
        .map(|s| (s.currency, s.text))
        .collect();
    match check_table(cfg, &texts, max_prices, in_force.as_ref()) {
        Ok(table) => Ok(Some(table)),
        Err(why) => {
            REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("refusing the rates in ZooKeeper ({why}); the table in force stays");
            if let Ok(mut last) = LAST_REFUSAL.lock() {
                *last = Some(why);
            }
            Ok(None)
        }
    }
}

/// Hand `table` on unless it is the one delivered last (or refused); false once
/// `on_change` wants no more.
fn deliver(
    table: Option<Rates>,
    last: &mut Option<Rates>,
    on_change: &mut impl FnMut(Rates) -> bool,
) -> bool {
    let Some(table) = table else { return true };
    if last.as_ref() == Some(&table) {
        return true;
    }
    *last = Some(table.clone());
    on_change(table)
}
