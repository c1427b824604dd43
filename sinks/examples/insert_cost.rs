// scratch: server CPU of prepared multi-row insert vs LOAD DATA LOCAL
use mysql_async::prelude::*;
use std::io::Write;
fn mysqld_ticks() -> u64 {
    let pid = std::fs::read_to_string("/work/main/.dtss/services/mariadb/mysqld.pid").unwrap();
    let st = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
    let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
struct H;
impl mysql_async::prelude::GlobalHandler for H {
    fn handle(
        &self,
        _f: &[u8],
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<mysql_async::InfileData, mysql_async::LocalInfileError>,
    > {
        Box::pin(async move {
            let data = std::fs::read("/tmp/ins/rows.tsv").unwrap();
            let s: mysql_async::InfileData = Box::pin(futures_util::stream::iter(
                data.chunks(1 << 20)
                    .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            ));
            Ok(s)
        })
    }
}
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let opts = mysql_async::OptsBuilder::from_opts(
        mysql_async::Opts::from_url("mysql://dtss:dtss@127.0.0.1:3306/scratch").unwrap(),
    )
    .local_infile_handler(Some(H));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let rows: Vec<Vec<String>> = std::fs::read_to_string("/tmp/ins/rows.tsv")
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect();
    let variants: Vec<(&str, &str)> = vec![
        ("base", ""),
        ("asciibin", "ALTER TABLE rp MODIFY order_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"),
        ("b16", "ALTER TABLE rp MODIFY order_id BINARY(16) NOT NULL"),
        ("b16nouser", "ALTER TABLE rp MODIFY order_id BINARY(16) NOT NULL, DROP KEY by_user"),
        ("nouser", "ALTER TABLE rp DROP KEY by_user"),
        ("b16hash", "ALTER TABLE rp MODIFY order_id BINARY(16) NOT NULL, DROP KEY by_user, ADD COLUMN uh BIGINT UNSIGNED AS (CONV(LEFT(MD5(user_id),16),16,10)) PERSISTENT, ADD KEY (uh, accepted_at)"),
    ];
    for round in 0..2 {
        for (name, ddl) in &variants {
            conn.query_drop("DROP TABLE IF EXISTS rp; CREATE TABLE rp LIKE dtss.result")
                .await
                .unwrap();
            if !ddl.is_empty() {
                conn.query_drop(*ddl).await.unwrap();
            }
            let b16 = name.starts_with("b16");
            let t0 = mysqld_ticks();
            let cols = "(order_id, user_id, initiator, success, reason, paid, rate_version, epoch, items, client_time, accepted_at, settled_at, `partition`, `offset`)";
            let sql = format!(
                "INSERT INTO rp {cols} VALUES {}",
                vec!["(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"; 512].join(",")
            );
            let stmt = conn.prep(&sql).await.unwrap();
            let mut i = 0;
            conn.query_drop("BEGIN").await.unwrap();
            while i + 512 <= rows.len() {
                let mut p: Vec<mysql_async::Value> = vec![];
                for r in &rows[i..i + 512] {
                    for (k, v) in r.iter().enumerate() {
                        p.push(if k == 0 && b16 {
                            mysql_async::Value::Bytes(
                                uuid::Uuid::parse_str(v).unwrap().as_bytes().to_vec(),
                            )
                        } else if v == "\\N" {
                            mysql_async::Value::NULL
                        } else if [3, 6, 7, 10, 11, 12, 13].contains(&k) {
                            mysql_async::Value::Int(v.parse().unwrap())
                        } else {
                            mysql_async::Value::Bytes(v.clone().into_bytes())
                        });
                    }
                }
                conn.exec_drop(&stmt, p).await.unwrap();
                i += 512;
                if (i / 512) % 6 == 0 {
                    conn.query_drop("COMMIT; BEGIN").await.unwrap();
                }
            }
            conn.query_drop("COMMIT").await.unwrap();
            let t1 = mysqld_ticks();
            println!("round {round} {name}: {} rows: {} ticks", i, t1 - t0);
            std::io::stdout().flush().unwrap();
        }
    }
}
