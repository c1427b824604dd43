//! Which endpoint a request names (method and path), and the per-user query's
//! parameters: pure decoding, before any handler runs.

use hyper::Method;

/// An endpoint of the API (docs/DESIGN.md, "API").
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/orders`, `POST /order`.
    Submit,
    /// `GET /api/orders?user_id=…&limit=…` (admin).
    ByUser,
    /// `GET /api/orders/{id}`, `GET /order/{id}`.
    Lookup(String),
    /// `GET /api/rates`.
    Rates,
    /// `PUT /api/rates/{CUR}` (admin).
    PutRate(String),
    /// `GET /api/totals` (admin).
    Totals,
    /// `GET /amount/{CUR}`.
    Amount(String),
    Health,
    Metrics,
    /// `GET /`: the console page.
    Console,
    /// `GET /api/status`: what the processes are doing (the console's live view).
    Status,
    /// `GET /api/catalogue?q=…&limit=…`.
    Catalogue,
    /// `GET /api/rates/history?versions=…`.
    RateHistory,
    /// `GET /api/views`: the job's live views (sales, top commodities, low stock).
    Views,
    /// A known path with a method it does not take.
    MethodNotAllowed,
    NotFound,
}

impl Endpoint {
    pub fn decode(method: &Method, path: &str) -> Endpoint {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::POST, ["api", "orders"]) | (&Method::POST, ["order"]) => Endpoint::Submit,
            (&Method::GET, ["api", "orders"]) => Endpoint::ByUser,
            (&Method::GET, ["api", "rates"]) => Endpoint::Rates,
            (&Method::GET, ["api", "rates", "history"]) => Endpoint::RateHistory,
            (&Method::GET, [""]) | (&Method::GET, ["index.html"]) => Endpoint::Console,
            (&Method::GET, ["api", "status"]) => Endpoint::Status,
            (&Method::GET, ["api", "catalogue"]) => Endpoint::Catalogue,
            (&Method::GET, ["api", "views"]) => Endpoint::Views,
            (&Method::PUT, ["api", "rates", cur]) => Endpoint::PutRate(cur.to_string()),
            (&Method::GET, ["api", "totals"]) => Endpoint::Totals,
            (&Method::GET, ["amount", cur]) => Endpoint::Amount(cur.to_string()),
            (&Method::GET, ["api", "orders", id]) | (&Method::GET, ["order", id]) => {
                Endpoint::Lookup(id.to_string())
            }
            (&Method::GET, ["healthz"]) => Endpoint::Health,
            (&Method::GET, ["metrics"]) => Endpoint::Metrics,
            (_, ["api", "orders"])
            | (_, ["order"])
            | (_, ["api", "orders", _])
            | (_, ["order", _]) => Endpoint::MethodNotAllowed,
            _ => Endpoint::NotFound,
        }
    }

    /// Its name in metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Submit => "submit",
            Endpoint::ByUser => "by_user",
            Endpoint::Rates => "rates",
            Endpoint::PutRate(_) => "put_rate",
            Endpoint::Totals => "totals",
            Endpoint::Amount(_) => "amount",
            Endpoint::Lookup(_) => "lookup",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Console => "console",
            Endpoint::Status => "status",
            Endpoint::Catalogue => "catalogue",
            Endpoint::RateHistory => "rate_history",
            Endpoint::Views => "views",
            Endpoint::MethodNotAllowed => "method_not_allowed",
            Endpoint::NotFound => "not_found",
        }
    }

    /// Whether it takes the admin token.
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            Endpoint::ByUser | Endpoint::Totals | Endpoint::PutRate(_)
        )
    }
}

/// The parameters of `GET /api/orders?user_id=…&limit=…`.
#[derive(Debug, PartialEq, Eq)]
pub struct UserQuery {
    pub user_id: String,
    /// 1–1000, 50 by default.
    pub limit: u32,
}

impl UserQuery {
    /// From the query string; Err((field, problem)) when a parameter is wrong or missing.
    pub fn parse(query: &str) -> Result<UserQuery, (&'static str, &'static str)> {
        let mut user = None;
        let mut limit = 50u32;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                "user_id" => user = Some(percent_decode(v)),
                "limit" => match v.parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => limit = n,
                    _ => return Err(("limit", "must be an integer from 1 to 1000")),
                },
                _ => {}
            }
        }
        match user.filter(|u| !u.is_empty()) {
            Some(user_id) => Ok(UserQuery { user_id, limit }),
            None => Err(("user_id", "is required: /api/orders?user_id=…&limit=…")),
        }
    }
}

/// `%XX` escapes and `+` for space, as a form encodes them; invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 3 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoints() {
        let d = |m: Method, p: &str| Endpoint::decode(&m, p);
        assert_eq!(d(Method::POST, "/api/orders"), Endpoint::Submit);
        assert_eq!(d(Method::POST, "/order/"), Endpoint::Submit);
        assert_eq!(
            d(Method::GET, "/api/orders/abc"),
            Endpoint::Lookup("abc".into())
        );
        assert_eq!(d(Method::GET, "/order/abc"), Endpoint::Lookup("abc".into()));
        assert_eq!(
            d(Method::PUT, "/api/rates/USD"),
            Endpoint::PutRate("USD".into())
        );
        assert_eq!(
            d(Method::GET, "/amount/EUR"),
            Endpoint::Amount("EUR".into())
        );
        assert_eq!(
            d(Method::DELETE, "/api/orders/abc"),
            Endpoint::MethodNotAllowed
        );
        assert_eq!(d(Method::GET, "/order"), Endpoint::MethodNotAllowed);
        assert_eq!(d(Method::GET, "/api/orders/a/b"), Endpoint::NotFound);
        assert_eq!(d(Method::GET, "/"), Endpoint::Console);
        assert_eq!(d(Method::POST, "/"), Endpoint::NotFound);
        assert_eq!(d(Method::GET, "/api/status"), Endpoint::Status);
        assert_eq!(d(Method::GET, "/api/catalogue"), Endpoint::Catalogue);
        assert_eq!(d(Method::GET, "/api/rates/history"), Endpoint::RateHistory);
        assert_eq!(d(Method::GET, "/api/views"), Endpoint::Views);
        assert!(!d(Method::GET, "/api/status").needs_admin());
        assert!(d(Method::GET, "/api/orders").needs_admin());
        assert!(d(Method::GET, "/api/totals").needs_admin());
        assert!(!d(Method::GET, "/amount/USD").needs_admin());
        assert!(!d(Method::GET, "/api/rates").needs_admin());
    }

    #[test]
    fn the_user_query_decodes_and_checks_its_parameters() {
        assert_eq!(
            UserQuery::parse("user_id=u%2D42+x&limit=7"),
            Ok(UserQuery {
                user_id: "u-42 x".into(),
                limit: 7
            })
        );
        assert_eq!(UserQuery::parse("limit=3&user_id=a").unwrap().limit, 3);
        assert_eq!(UserQuery::parse("user_id=a").unwrap().limit, 50);
        assert_eq!(
            UserQuery::parse("user_id=a&limit=0").unwrap_err().0,
            "limit"
        );
        assert_eq!(
            UserQuery::parse("user_id=a&limit=1001").unwrap_err().0,
            "limit"
        );
        assert_eq!(UserQuery::parse("limit=5").unwrap_err().0, "user_id");
        assert_eq!(UserQuery::parse("user_id=").unwrap_err().0, "user_id");
        // A bad or short escape stays as it is; invalid UTF-8 is replaced.
        assert_eq!(UserQuery::parse("user_id=%zz%4").unwrap().user_id, "%zz%4");
        assert_eq!(UserQuery::parse("user_id=%ff").unwrap().user_id, "\u{fffd}");
    }
}
