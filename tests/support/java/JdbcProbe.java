// JdbcProbe: drives the real PostgreSQL JDBC driver (pgJDBC) through named scenarios for pgtenant tests.
//
// Usage: java -cp <classes>:<postgresql.jar> JdbcProbe <jdbc-url> <scenario> [args...]
// User and password come from env PGTENANT_JDBC_USER / PGTENANT_JDBC_PASSWORD.
// Success: exit 0, the last stdout line is a JSON document.
// Failure: exit 1, the last stdout line is {"error": ..., "sqlstate": ..., "class": ...}; stack trace on stderr.

import java.lang.reflect.Method;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Driver;
import java.sql.DriverManager;
import java.sql.DriverPropertyInfo;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGStatement;
import org.postgresql.jdbc.PgResultSet;

public final class JdbcProbe {
    private JdbcProbe() {}

    public static void main(String[] argv) {
        if (argv.length < 2) {
            System.err.println("usage: JdbcProbe <jdbc-url> <metadata|prepared|fetchsize|cancel|ssl|query|script|driverinfo> [args]");
            System.exit(2);
        }
        String url = argv[0];
        String scenario = argv[1];
        String[] args = Arrays.copyOfRange(argv, 2, argv.length);
        Properties props = new Properties();
        String user = System.getenv("PGTENANT_JDBC_USER");
        String password = System.getenv("PGTENANT_JDBC_PASSWORD");
        if (user != null) props.setProperty("user", user);
        if (password != null) props.setProperty("password", password);
        DriverManager.setLoginTimeout(20);
        try {
            Object result;
            switch (scenario) {
                case "metadata": result = metadata(url, props, args); break;
                case "prepared": result = prepared(url, props, args); break;
                case "fetchsize": result = fetchsize(url, props, args); break;
                case "openresults": result = openresults(url, props, args); break;
                case "autosaveerrors": result = autosaveerrors(url, props, args); break;
                case "cancel": result = cancel(url, props, args); break;
                case "ssl": result = ssl(url, props); break;
                case "query": result = query(url, props, args); break;
                case "script": result = script(url, props, args); break;
                case "driverinfo": result = driverinfo(url); break;
                default:
                    System.err.println("unknown scenario: " + scenario);
                    System.exit(2);
                    return;
            }
            System.out.println(Json.encode(result));
            System.out.flush();
        } catch (Throwable t) {
            t.printStackTrace(System.err);
            Map<String, Object> err = new LinkedHashMap<>();
            err.put("error", String.valueOf(t.getMessage()));
            err.put("class", t.getClass().getName());
            err.put("sqlstate", t instanceof SQLException ? ((SQLException) t).getSQLState() : null);
            System.out.println(Json.encode(err));
            System.out.flush();
            System.exit(1);
        }
    }

    /**
     * DatabaseMetaData.getTables(schema) and getColumns of args[0] (default: first table).
     * args[1] is the schema pattern (default "public"; "*" means null, i.e. every schema).
     */
    static Object metadata(String url, Properties props, String[] args) throws SQLException {
        String schema = args.length > 1 ? args[1] : "public";
        if ("*".equals(schema)) schema = null;
        try (Connection c = DriverManager.getConnection(url, props)) {
            DatabaseMetaData md = c.getMetaData();
            List<Object> tables = new ArrayList<>();
            List<Object> qualified = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, schema, "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME"));
                    qualified.add(rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME"));
                }
            }
            String target = args.length > 0 && !args[0].isEmpty()
                    ? args[0] : (tables.isEmpty() ? null : (String) tables.get(0));
            List<Object> columns = new ArrayList<>();
            if (target != null) {
                try (ResultSet rs = md.getColumns(null, schema, target, "%")) {
                    while (rs.next()) {
                        Map<String, Object> col = new LinkedHashMap<>();
                        col.put("name", rs.getString("COLUMN_NAME"));
                        col.put("type", rs.getString("TYPE_NAME"));
                        col.put("position", rs.getInt("ORDINAL_POSITION"));
                        col.put("nullable", rs.getString("IS_NULLABLE"));
                        columns.add(col);
                    }
                }
            }
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("product", md.getDatabaseProductName());
            out.put("product_version", md.getDatabaseProductVersion());
            out.put("driver_version", md.getDriverVersion());
            out.put("tables", tables);
            out.put("qualified_tables", qualified);
            out.put("table", target);
            out.put("columns", columns);
            return out;
        }
    }

    /** A PreparedStatement executed N times (default 10): crosses prepareThreshold into S_n + binary. */
    static Object prepared(String url, Properties props, String[] args) throws SQLException {
        int n = args.length > 0 ? Integer.parseInt(args[0]) : 10;
        try (Connection c = DriverManager.getConnection(url, props);
             PreparedStatement ps = c.prepareStatement("SELECT ?::int8 + 1, ?::numeric * 2")) {
            PGStatement pgs = ps.unwrap(PGStatement.class);
            List<Object> rows = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                boolean serverPrepared = pgs.isUseServerPrepare();
                ps.setLong(1, i * 1000L);
                ps.setBigDecimal(2, new BigDecimal(i + ".25"));
                try (ResultSet rs = ps.executeQuery()) {
                    if (!rs.next()) throw new SQLException("no row on execution " + i);
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("i", i);
                    row.put("sum", rs.getLong(1));
                    row.put("product", rs.getBigDecimal(2).toPlainString());
                    row.put("server_prepared", serverPrepared);
                    row.put("binary", Arrays.asList(isBinary(rs, 1), isBinary(rs, 2)));
                    rows.add(row);
                }
            }
            List<Object> names = new ArrayList<>();
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT name FROM pg_prepared_statements ORDER BY name")) {
                while (rs.next()) names.add(rs.getString(1));
            }
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("prepare_threshold", pgs.getPrepareThreshold());
            out.put("rows", rows);
            out.put("prepared_statements", names);
            return out;
        }
    }

    /** autocommit off + setFetchSize: rows are pulled through a named portal in batches. */
    static Object fetchsize(String url, Properties props, String[] args) throws SQLException {
        int total = args.length > 0 ? Integer.parseInt(args[0]) : 1000;
        int fetch = args.length > 1 ? Integer.parseInt(args[1]) : 100;
        try (Connection c = DriverManager.getConnection(url, props)) {
            c.setAutoCommit(false);
            long count = 0;
            long sum = 0;
            List<Object> portals = new ArrayList<>();
            try (Statement st = c.createStatement()) {
                st.setFetchSize(fetch);
                try (ResultSet rs = st.executeQuery(
                        "SELECT g, md5(g::text) FROM generate_series(1, " + total + ") AS g")) {
                    while (rs.next()) {
                        count++;
                        sum += rs.getLong(1);
                        if (rs.getString(2).length() != 32) throw new SQLException("bad md5 at row " + count);
                        if (count == 1) {
                            try (Statement st2 = c.createStatement();
                                 ResultSet r2 = st2.executeQuery("SELECT name FROM pg_cursors ORDER BY name")) {
                                while (r2.next()) portals.add(r2.getString(1));
                            }
                        }
                    }
                }
            }
            c.commit();
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("count", count);
            out.put("sum", sum);
            out.put("fetch_size", fetch);
            out.put("portals", portals);
            return out;
        }
    }

    /** autocommit off + setFetchSize, in one transaction: `seq` ResultSets one after another (each read in part,
     *  then closed: pgJDBC closes its named portal), then `open` ResultSets open at once (each a named portal
     *  C_n, suspended after its first fetch), then all read to their end; committed. */
    static Object openresults(String url, Properties props, String[] args) throws SQLException {
        int seq = Integer.parseInt(args[0]);
        int open = Integer.parseInt(args[1]);
        int fetch = args.length > 2 ? Integer.parseInt(args[2]) : 2;
        try (Connection c = DriverManager.getConnection(url, props)) {
            c.setAutoCommit(false);
            long rows = 0;
            for (int i = 0; i < seq; i++) {
                try (Statement st = c.createStatement()) {
                    st.setFetchSize(fetch);
                    try (ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 10) AS g")) {
                        rs.next();
                        rows++;
                    }
                }
            }
            List<Statement> sts = new ArrayList<>();
            List<ResultSet> rss = new ArrayList<>();
            try {
                for (int i = 0; i < open; i++) {
                    Statement st = c.createStatement();
                    sts.add(st);
                    st.setFetchSize(fetch);
                    ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 10) AS g");
                    rss.add(rs);
                    rs.next();
                    rows++;
                }
                for (ResultSet rs : rss) while (rs.next()) rows++;
            } finally {
                for (ResultSet rs : rss) rs.close();
                for (Statement st : sts) st.close();
            }
            c.commit();
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("rows", rows);
            return out;
        }
    }

    /** autocommit off + setFetchSize, in one transaction (the URL sets autosave): `errors` queries failing with
     *  division by zero (each a named portal C_n that pgJDBC's autosave rolls back to its savepoint), each error
     *  caught, then `open` ResultSets open at once, all read; committed. The errors' SQLSTATEs and the rows. */
    static Object autosaveerrors(String url, Properties props, String[] args) throws SQLException {
        int errors = Integer.parseInt(args[0]);
        int open = Integer.parseInt(args[1]);
        try (Connection c = DriverManager.getConnection(url, props)) {
            c.setAutoCommit(false);
            List<Object> states = new ArrayList<>();
            for (int i = 0; i < errors; i++) {
                try (Statement st = c.createStatement()) {
                    st.setFetchSize(2);
                    try (ResultSet rs = st.executeQuery("SELECT 1 / (g - 1) FROM generate_series(1, 10) AS g")) {
                        while (rs.next()) { }
                    }
                } catch (SQLException e) {
                    states.add(e.getSQLState());
                }
            }
            long rows = 0;
            List<Statement> sts = new ArrayList<>();
            List<ResultSet> rss = new ArrayList<>();
            try {
                for (int i = 0; i < open; i++) {
                    Statement st = c.createStatement();
                    sts.add(st);
                    st.setFetchSize(2);
                    ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 10) AS g");
                    rss.add(rs);
                    rs.next();
                    rows++;
                }
                for (ResultSet rs : rss) while (rs.next()) rows++;
            } finally {
                for (ResultSet rs : rss) rs.close();
                for (Statement st : sts) st.close();
            }
            c.commit();
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("errors", states);
            out.put("rows", rows);
            return out;
        }
    }

    /** SELECT pg_sleep(secs) cancelled from another thread after delay ms via Statement.cancel(). */
    static Object cancel(String url, Properties props, String[] args) throws Exception {
        long delayMs = args.length > 0 ? Long.parseLong(args[0]) : 1000L;
        int sleepSecs = args.length > 1 ? Integer.parseInt(args[1]) : 30;
        try (Connection c = DriverManager.getConnection(url, props); Statement st = c.createStatement()) {
            AtomicReference<Throwable> cancelError = new AtomicReference<>();
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(delayMs);
                    st.cancel();
                } catch (Throwable t) {
                    cancelError.set(t);
                }
            });
            long start = System.nanoTime();
            canceller.start();
            String sqlstate = null;
            String message = null;
            try {
                st.execute("SELECT pg_sleep(" + sleepSecs + ")");
            } catch (SQLException e) {
                sqlstate = e.getSQLState();
                message = e.getMessage();
            }
            long elapsedMs = (System.nanoTime() - start) / 1_000_000L;
            canceller.join();
            boolean usable;
            try (ResultSet rs = st.executeQuery("SELECT 1")) {
                usable = rs.next() && rs.getInt(1) == 1;
            }
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("sqlstate", sqlstate);
            out.put("message", message);
            out.put("elapsed_ms", elapsedMs);
            out.put("cancel_error", cancelError.get() == null ? null : cancelError.get().toString());
            out.put("usable_after", usable);
            return out;
        }
    }

    /** Connect (TLS parameters are in the URL) and report SELECT 1 plus pg_stat_ssl for this backend. */
    static Object ssl(String url, Properties props) throws SQLException {
        try (Connection c = DriverManager.getConnection(url, props); Statement st = c.createStatement()) {
            Map<String, Object> out = new LinkedHashMap<>();
            try (ResultSet rs = st.executeQuery("SELECT 1")) {
                rs.next();
                out.put("select1", rs.getInt(1));
            }
            try (ResultSet rs = st.executeQuery(
                    "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")) {
                if (rs.next()) {
                    out.put("ssl", rs.getBoolean(1));
                    out.put("tls_version", rs.getString(2));
                    out.put("cipher", rs.getString(3));
                }
            }
            return out;
        }
    }

    /** Run args[0] with a plain Statement and return {columns, rows} (all values as strings). */
    static Object query(String url, Properties props, String[] args) throws SQLException {
        if (args.length < 1) throw new IllegalArgumentException("query scenario needs an SQL argument");
        try (Connection c = DriverManager.getConnection(url, props); Statement st = c.createStatement()) {
            Map<String, Object> out = new LinkedHashMap<>();
            List<Object> rows = new ArrayList<>();
            List<Object> cols = new ArrayList<>();
            if (st.execute(args[0])) {
                try (ResultSet rs = st.getResultSet()) {
                    int n = rs.getMetaData().getColumnCount();
                    for (int i = 1; i <= n; i++) cols.add(rs.getMetaData().getColumnLabel(i));
                    while (rs.next()) {
                        List<Object> row = new ArrayList<>();
                        for (int i = 1; i <= n; i++) row.add(rs.getString(i));
                        rows.add(row);
                    }
                }
            } else {
                out.put("update_count", st.getUpdateCount());
            }
            out.put("columns", cols);
            out.put("rows", rows);
            return out;
        }
    }

    /**
     * Run each argument on one connection, in order, as a BI tool's session does: a plain Statement (a string with
     * several statements is one batch: pgJDBC sends one Parse/Bind/Execute each and one Sync), or, for
     * "SQL|||v1|||v2", a PreparedStatement with those string parameters. An argument "autocommit=off" / "commit" /
     * "rollback" drives the transaction. Each step reports every result it returned, or its error; the script
     * goes on after an error (like a tool that reports it and carries on).
     */
    static Object script(String url, Properties props, String[] args) throws SQLException {
        List<Object> steps = new ArrayList<>();
        try (Connection c = DriverManager.getConnection(url, props)) {
            for (String arg : args) {
                Map<String, Object> step = new LinkedHashMap<>();
                step.put("sql", arg);
                List<Object> results = new ArrayList<>();
                try {
                    if (arg.equals("autocommit=off")) {
                        c.setAutoCommit(false);
                    } else if (arg.equals("commit")) {
                        c.commit();
                    } else if (arg.equals("rollback")) {
                        c.rollback();
                    } else if (arg.contains("|||")) {
                        String[] parts = arg.split("\\|\\|\\|", -1);
                        try (PreparedStatement ps = c.prepareStatement(parts[0])) {
                            // untyped, as a tool binding a literal: PostgreSQL infers the parameter's type
                            for (int i = 1; i < parts.length; i++) ps.setObject(i, parts[i], Types.OTHER);
                            collect(ps, ps.execute(), results);
                        }
                    } else {
                        try (Statement st = c.createStatement()) {
                            collect(st, st.execute(arg), results);
                        }
                    }
                } catch (SQLException e) {
                    step.put("error", e.getMessage());
                    step.put("sqlstate", e.getSQLState());
                }
                step.put("results", results);
                steps.add(step);
            }
        }
        return steps;
    }

    /** Every result of an executed statement: {"columns", "rows"} or {"update_count"}. */
    static void collect(Statement st, boolean isResultSet, List<Object> out) throws SQLException {
        while (true) {
            Map<String, Object> res = new LinkedHashMap<>();
            if (isResultSet) {
                try (ResultSet rs = st.getResultSet()) {
                    int n = rs.getMetaData().getColumnCount();
                    List<Object> cols = new ArrayList<>();
                    for (int i = 1; i <= n; i++) cols.add(rs.getMetaData().getColumnLabel(i));
                    List<Object> rows = new ArrayList<>();
                    while (rs.next()) {
                        List<Object> row = new ArrayList<>();
                        for (int i = 1; i <= n; i++) row.add(rs.getString(i));
                        rows.add(row);
                    }
                    res.put("columns", cols);
                    res.put("rows", rows);
                }
            } else {
                int count = st.getUpdateCount();
                if (count == -1) return;
                res.put("update_count", count);
            }
            out.add(res);
            isResultSet = st.getMoreResults();
        }
    }

    /** Whether pgJDBC received column {@code col} of the current result in binary format (protected API). */
    static boolean isBinary(ResultSet rs, int col) throws SQLException {
        try {
            PgResultSet prs = rs.unwrap(PgResultSet.class);
            Method m = PgResultSet.class.getDeclaredMethod("isBinary", int.class);
            m.setAccessible(true);
            return (Boolean) m.invoke(prs, col);
        } catch (ReflectiveOperationException e) {
            throw new SQLException("cannot inspect result format: " + e, e);
        }
    }

    /** Driver version and the connection property names it understands (no connection is made). */
    static Object driverinfo(String url) throws SQLException {
        Driver d = DriverManager.getDriver(url);
        List<Object> names = new ArrayList<>();
        for (DriverPropertyInfo info : d.getPropertyInfo(url, new Properties())) names.add(info.name);
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("driver_version", d.getMajorVersion() + "." + d.getMinorVersion());
        out.put("driver_class", d.getClass().getName());
        out.put("package_version", d.getClass().getPackage().getImplementationVersion());
        out.put("properties", names);
        return out;
    }

    /** Minimal JSON encoder for Map/List/String/Number/Boolean/null. */
    static final class Json {
        private Json() {}

        static String encode(Object o) {
            StringBuilder sb = new StringBuilder();
            write(sb, o);
            return sb.toString();
        }

        private static void write(StringBuilder sb, Object o) {
            if (o == null) {
                sb.append("null");
            } else if (o instanceof String) {
                str(sb, (String) o);
            } else if (o instanceof Boolean || o instanceof Integer || o instanceof Long) {
                sb.append(o);
            } else if (o instanceof Number) {
                str(sb, o.toString());
            } else if (o instanceof Map) {
                sb.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> e : ((Map<?, ?>) o).entrySet()) {
                    if (!first) sb.append(',');
                    first = false;
                    str(sb, String.valueOf(e.getKey()));
                    sb.append(':');
                    write(sb, e.getValue());
                }
                sb.append('}');
            } else if (o instanceof List) {
                sb.append('[');
                boolean first = true;
                for (Object item : (List<?>) o) {
                    if (!first) sb.append(',');
                    first = false;
                    write(sb, item);
                }
                sb.append(']');
            } else {
                str(sb, o.toString());
            }
        }

        private static void str(StringBuilder sb, String s) {
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char ch = s.charAt(i);
                switch (ch) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    default:
                        if (ch < 0x20) sb.append(String.format("\\u%04x", (int) ch));
                        else sb.append(ch);
                }
            }
            sb.append('"');
        }
    }
}
