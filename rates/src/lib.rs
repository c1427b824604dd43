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
    let plain = !rate.is_empty()
        && rate.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && rate.bytes().filter(|b| *b == b'.').count() <= 1;
    let r = Decimal::from_str(rate)
        .ok()
        .filter(|_| plain)
        .ok_or_else(|| {
            err(
                "rate",
                format!("{rate:?} is not a plain decimal number like 7.12"),
            )
        })?;
    if r <= Decimal::ZERO {
        return Err(err("rate", format!("{rate} must be positive")));
    }
    if r.scale() > modifier::RATE_DP {
        return Err(err(
            "rate",
            format!("{rate} has more than {} decimals", modifier::RATE_DP),
        ));
    }
    let (lo, hi) = hard_range(cfg, c);
    if r < lo || r > hi {
        return Err(err(
            "rate",
            format!(
                "{rate} is outside {c}'s hard range {lo} to {hi} (currencies.hard_factor {} of its initial rate)",
                cfg.currencies.hard_factor
            ),
        ));
    }
    Ok((c, r))
}

/// The rates `c` may be set to: within `currencies.hard_factor` of its initial rate.
pub fn hard_range(cfg: &Config, c: Currency) -> (Decimal, Decimal) {
    let initial = cfg
        .currencies
        .initial
        .iter()
        .find(|(k, _)| *k == c)
        .map_or(Decimal::ONE, |(_, r)| *r);
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
                        "cannot reach ZooKeeper at {} (zookeeper.connect): is it running? (scripts/services.sh up)",
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

/// Read every configured currency's rate, with each znode's version.
pub async fn read_rates(client: &Client, cfg: &Config) -> Result<Vec<(Currency, Decimal, i32)>> {
    let mut out = vec![];
    for c in cfg.currencies.all.clone() {
        let path = rate_path(cfg, c);
        let (data, stat) = client
            .get_data(&path)
            .await
            .with_context(|| format!("reading {path}"))?;
        let text = String::from_utf8_lossy(&data);
        let rate = Decimal::from_str(text.trim())
            .with_context(|| format!("{path} holds {text:?}, not a decimal rate"))?;
        if rate <= Decimal::ZERO {
            bail!("{path} holds {rate}, not a positive rate");
        }
        out.push((c, rate, stat.version));
    }
    Ok(out)
}

/// Follow the rates with a persistent recursive watch and call `on_change` with the
/// full table whenever it differs from the last one delivered (and once at start).
/// After any reconnect the session and the watch are set up afresh and every rate is
/// read again, so a change made while the client was away is not missed. Runs on its own
/// thread until `on_change` returns false.
pub fn spawn_rate_feed(
    cfg: Config,
    mut on_change: impl FnMut(Rates) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("rate-feed".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let mut last: Option<Rates> = None;
                loop {
                    match follow(&cfg, &mut last, &mut on_change).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!("rate feed lost ZooKeeper, reconnecting: {e:#}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        })
        .expect("spawn rate-feed thread")
}

async fn follow(
    cfg: &Config,
    last: &mut Option<Rates>,
    on_change: &mut impl FnMut(Rates) -> bool,
) -> Result<()> {
    let client = connect(cfg, Duration::from_secs(3600)).await?;
    let mut watcher = client
        .watch(&rates_path(cfg), zk::AddWatchMode::PersistentRecursive)
        .await
        .context("watching rates")?;
    let mut deliver = |table: Rates| -> bool {
        if last.as_ref() == Some(&table) {
            return true;
        }
        *last = Some(table.clone());
        on_change(table)
    };
    let read = |client: &Client| {
        let client = client.clone();
        async move {
            read_rates(&client, cfg)
                .await
                .map(|v| v.into_iter().map(|(c, r, _)| (c, r)).collect::<Rates>())
        }
    };
    if !deliver(read(&client).await?) {
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
        if !deliver(read(&client).await?) {
            return Ok(());
        }
    }
}
