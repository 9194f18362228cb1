// pgJDBC through pglink, run as a single-file source program:
//
//   java -cp postgresql.jar tests/drivers/JdbcCheck.java
//
// with PGLINK_DSN (postgresql://user:password@host:port/database) and PGLINK_TABLE (a table
// name the program may create). For prepareThreshold 5 (the default) and 1, CLIENTS threads at
// once each run: a PreparedStatement reused across many transactions (pgJDBC switches to a
// named server-side statement S_n after the threshold, which must then work on whatever server
// connection the next transaction gets), batch inserts with and without
// reWriteBatchedInserts (one Sync for many Bind/Execute), a failing batch, setFetchSize
// cursors (Execute with a row limit, PortalSuspended, two portals open at once) inside a
// transaction, an error inside a transaction, with autosave=always (savepoints) too, a query
// cancelled by setQueryTimeout, and more statements than its statement cache holds (Close of
// evicted statements). Exits non-zero on any wrong result.
import java.net.URI;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

public class JdbcCheck {
    static final int CLIENTS = 24;
    static final int ROUNDS = 12;
    static final int BATCH = 50;
    static final int AUTOSAVED = 5;

    static String url;
    static String user;
    static String password;
    static String table;
    /** Clients that saw more than one server connection (pg_backend_pid). */
    static final Set<Integer> moved = ConcurrentHashMap.newKeySet();

    public static void main(String[] args) throws Exception {
        URI dsn = URI.create(System.getenv("PGLINK_DSN"));
        table = System.getenv("PGLINK_TABLE");
        String[] userInfo = dsn.getUserInfo().split(":", 2);
        user = userInfo[0];
        password = userInfo[1];
        url = "jdbc:postgresql://" + dsn.getHost() + ":" + dsn.getPort() + dsn.getPath();

        try (Connection c = connect(5, false); Statement st = c.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + table);
            st.execute("CREATE TABLE " + table
                    + " (config text, client int, v int CHECK (v >= 0))");
        }
        List<String> errors = new ArrayList<>();
        for (int threshold : new int[] {5, 1}) {
            ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
            List<Future<?>> futures = new ArrayList<>();
            for (int i = 0; i < CLIENTS; i++) {
                final int client = i;
                futures.add(pool.submit(() -> {
                    client(threshold, client);
                    return null;
                }));
            }
            for (int i = 0; i < CLIENTS; i++) {
                try {
                    futures.get(i).get();
                } catch (Exception e) {
                    Throwable cause = e.getCause() != null ? e.getCause() : e;
                    errors.add("prepareThreshold=" + threshold + " client " + i + ": " + cause);
                    if (errors.size() <= 2) {
                        cause.printStackTrace();
                    }
                }
            }
            pool.shutdown();
        }
        if (!errors.isEmpty()) {
            errors.forEach(System.err::println);
            System.exit(1);
        }
        try (Connection c = connect(5, false); Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*) FROM " + table)) {
            rs.next();
            // Per client and threshold: ROUNDS single rows, two committed batches of BATCH
            // rows, plain and rewritten, and the rows kept by autosave.
            long want = 2L * CLIENTS * (ROUNDS + 2 * 2 * BATCH + AUTOSAVED);
            check(rs.getLong(1) == want, "total rows " + rs.getLong(1) + ", want " + want);
        }
        check(!moved.isEmpty(), "no client ever changed server connection: nothing was shared");
        System.out.println("pgjdbc ok: prepareThreshold 5 and 1, " + CLIENTS + " clients, "
                + moved.size() + " of " + 2 * CLIENTS + " sessions moved between server connections");
    }

    static Connection connect(int prepareThreshold, boolean rewriteBatches) throws SQLException {
        return connect(prepareThreshold, rewriteBatches, 256);
    }

    static Connection connect(int prepareThreshold, boolean rewriteBatches, int cachedStatements)
            throws SQLException {
        return connect(prepareThreshold, rewriteBatches, cachedStatements, new Properties());
    }

    static Connection connect(int prepareThreshold, boolean rewriteBatches, int cachedStatements,
            Properties extra) throws SQLException {
        Properties p = new Properties();
        p.putAll(extra);
        p.setProperty("preparedStatementCacheQueries", Integer.toString(cachedStatements));
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("sslmode", "disable");
        p.setProperty("prepareThreshold", Integer.toString(prepareThreshold));
        p.setProperty("reWriteBatchedInserts", Boolean.toString(rewriteBatches));
        return DriverManager.getConnection(url, p);
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static void client(int threshold, int i) throws SQLException {
        String config = "t" + threshold;
        try (Connection plain = connect(threshold, false);
                Connection rewriting = connect(threshold, true)) {
            preparedAcrossTransactions(plain, config, i, threshold);
            batches(plain, config, i, false);
            batches(rewriting, config, i, true);
            cursors(plain, i);
            errorInTransaction(plain);
            if (i % 6 == 0) {
                cancelled(plain);
            }
        }
        try (Connection small = connect(threshold, false, 3)) {
            evictions(small, i);
        }
        Properties autosave = new Properties();
        autosave.setProperty("autosave", "always");
        try (Connection c = connect(threshold, false, 256, autosave)) {
            autosaved(c, config, i);
        }
    }

    /** One PreparedStatement executed ROUNDS times, alternately in a transaction and alone. */
    static void preparedAcrossTransactions(Connection c, String config, int i, int threshold)
            throws SQLException {
        Set<Integer> pids = new java.util.HashSet<>();
        // pgJDBC names server-side statements S_1, S_2, .. in the order it prepares them: a
        // few statements first, as many as i % 4, give each client other names for the same
        // texts, and the same names to other texts (the sum's text differs with i % 4 too).
        int shift = i % 4;
        for (int w = 0; w < shift; w++) {
            try (PreparedStatement warm = c.prepareStatement("SELECT ?::int AS warm_" + w)) {
                for (int n = 0; n < threshold; n++) {
                    warm.setInt(1, n);
                    try (ResultSet rs = warm.executeQuery()) {
                        check(rs.next() && rs.getInt(1) == n, "warm-up " + w);
                    }
                }
            }
        }
        try (PreparedStatement sum = c.prepareStatement(
                        "SELECT ?::int + ?::int + " + shift + ", pg_backend_pid()");
                PreparedStatement insert = c.prepareStatement(
                        "INSERT INTO " + table + " (config, client, v) VALUES (?, ?, ?)");
                PreparedStatement count = c.prepareStatement(
                        "SELECT count(*) FROM " + table + " WHERE config = ? AND client = ?")) {
            for (int j = 0; j < ROUNDS; j++) {
                boolean tx = j % 2 == 1;
                c.setAutoCommit(!tx);
                sum.setInt(1, i);
                sum.setInt(2, j);
                try (ResultSet rs = sum.executeQuery()) {
                    check(rs.next(), "no row");
                    check(rs.getInt(1) == i + j + shift,
                            "sum " + rs.getInt(1) + ", want " + (i + j + shift));
                    pids.add(rs.getInt(2));
                }
                insert.setString(1, config);
                insert.setInt(2, i);
                insert.setInt(3, j);
                check(insert.executeUpdate() == 1, "insert count");
                count.setString(1, config);
                count.setInt(2, i);
                try (ResultSet rs = count.executeQuery()) {
                    rs.next();
                    check(rs.getLong(1) == j + 1, "count " + rs.getLong(1) + ", want " + (j + 1));
                }
                if (tx) {
                    c.commit();
                }
            }
            c.setAutoCommit(true);
            // After the threshold pgJDBC uses a server-side prepared statement.
            check(sum.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare()
                    || threshold > ROUNDS, "statement was never server-prepared");
        }
        if (pids.size() > 1) {
            moved.add(threshold * 1000 + i);
        }
    }

    /**
     * More statements than pgJDBC's statement cache holds (3): it closes the oldest server-side
     * statement (Close S_n) and prepares an evicted one again under a new name.
     */
    static void evictions(Connection c, int i) throws SQLException {
        for (int round = 0; round < 8; round++) {
            for (int k = 0; k < 5; k++) {
                try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * " + (k + 2))) {
                    for (int n = 0; n < 5; n++) {
                        ps.setInt(1, i + round);
                        try (ResultSet rs = ps.executeQuery()) {
                            check(rs.next() && rs.getInt(1) == (i + round) * (k + 2),
                                    "evicted statement " + k + " round " + round);
                        }
                    }
                }
            }
        }
    }

    /** addBatch/executeBatch in autocommit, a rolled-back batch, and a batch that fails. */
    static void batches(Connection c, String config, int i, boolean rewritten) throws SQLException {
        int base = rewritten ? 10_000 : 1_000;
        String sql = "INSERT INTO " + table + " (config, client, v) VALUES (?, ?, ?)";
        // A rewritten batch reports SUCCESS_NO_INFO per row; a plain one a count of 1.
        int perRow = rewritten ? Statement.SUCCESS_NO_INFO : 1;
        c.setAutoCommit(true);
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int k = 0; k < BATCH; k++) {
                ps.setString(1, config);
                ps.setInt(2, i);
                ps.setInt(3, base + k);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            check(counts.length == BATCH, "batch result length " + counts.length);
            for (int n : counts) {
                check(n == perRow, "batch row count " + n + ", want " + perRow);
            }
        }
        // The same in a transaction that is rolled back: nothing stays.
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int k = 0; k < BATCH; k++) {
                ps.setString(1, config);
                ps.setInt(2, i);
                ps.setInt(3, base + 500 + k);
                ps.addBatch();
            }
            ps.executeBatch();
            c.rollback();
        }
        // Committed in a transaction: stays.
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int k = 0; k < BATCH; k++) {
                ps.setString(1, config);
                ps.setInt(2, i);
                ps.setInt(3, base + 1000 + k);
                ps.addBatch();
            }
            ps.executeBatch();
            c.commit();
        }
        c.setAutoCommit(true);
        // A batch whose 30th row breaks the CHECK constraint: 23514, and none of it stays.
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int k = 0; k < BATCH; k++) {
                ps.setString(1, config);
                ps.setInt(2, i);
                ps.setInt(3, k == 30 ? -1 : base + 2000 + k);
                ps.addBatch();
            }
            try {
                ps.executeBatch();
                throw new AssertionError("a batch with a bad row succeeded");
            } catch (BatchUpdateException e) {
                SQLException cause = e.getNextException() != null ? e.getNextException() : e;
                check("23514".equals(cause.getSQLState()), "batch error " + cause.getSQLState());
            }
        }
        try (PreparedStatement ps = c.prepareStatement("SELECT count(*), min(v), max(v) FROM "
                + table + " WHERE config = ? AND client = ? AND v >= ? AND v < ?")) {
            ps.setString(1, config);
            ps.setInt(2, i);
            ps.setInt(3, base);
            ps.setInt(4, base + 5000);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                check(rs.getLong(1) == 2 * BATCH, "batch rows " + rs.getLong(1) + ", want " + 2 * BATCH);
                check(rs.getInt(2) == base && rs.getInt(3) == base + 1000 + BATCH - 1,
                        "batch values " + rs.getInt(2) + ".." + rs.getInt(3));
            }
        }
    }

    /** setFetchSize cursors in a transaction: fetched in pages, two portals open at once. */
    static void cursors(Connection c, int i) throws SQLException {
        c.setAutoCommit(false);
        for (int round = 0; round < 3; round++) {
            try (Statement st = c.createStatement()) {
                st.setFetchSize(7);
                long rows = 0;
                long sum = 0;
                try (ResultSet rs = st.executeQuery(
                        "SELECT g, md5(g::text) FROM generate_series(1, 500) g")) {
                    while (rs.next()) {
                        rows++;
                        sum += rs.getInt(1);
                        check(rs.getString(2).length() == 32, "md5 column");
                    }
                }
                check(rows == 500 && sum == 500L * 501 / 2, "cursor rows " + rows + " sum " + sum);
            }
            try (PreparedStatement a = c.prepareStatement(
                            "SELECT g * ?::int FROM generate_series(1, ?::int) g ORDER BY g");
                    PreparedStatement b = c.prepareStatement(
                            "SELECT g + ?::int FROM generate_series(1, ?::int) g ORDER BY g")) {
                a.setFetchSize(5);
                b.setFetchSize(3);
                a.setInt(1, 2);
                a.setInt(2, 100);
                b.setInt(1, i);
                b.setInt(2, 100);
                try (ResultSet ra = a.executeQuery(); ResultSet rb = b.executeQuery()) {
                    for (int g = 1; g <= 100; g++) {
                        check(ra.next() && rb.next(), "interleaved cursors ended early at " + g);
                        check(ra.getInt(1) == 2 * g, "cursor a " + ra.getInt(1) + " at " + g);
                        check(rb.getInt(1) == g + i, "cursor b " + rb.getInt(1) + " at " + g);
                    }
                    check(!ra.next() && !rb.next(), "interleaved cursors too long");
                }
            }
            c.commit();
        }
        c.setAutoCommit(true);
    }

    /**
     * autosave=always: pgJDBC sets a savepoint before each statement in a transaction and
     * rolls back to it after an error, so the transaction goes on and keeps its other rows.
     */
    static void autosaved(Connection c, String config, int i) throws SQLException {
        c.setAutoCommit(false);
        try (PreparedStatement ins = c.prepareStatement(
                        "INSERT INTO " + table + " (config, client, v) VALUES (?, ?, ?)");
                Statement st = c.createStatement()) {
            for (int k = 0; k < AUTOSAVED; k++) {
                ins.setString(1, config);
                ins.setInt(2, i);
                ins.setInt(3, 50_000 + k);
                check(ins.executeUpdate() == 1, "autosaved insert");
                expectState(st, "SELECT 1 / 0", "22012");
            }
            c.commit();
            try (ResultSet rs = st.executeQuery("SELECT count(*) FROM " + table
                    + " WHERE config = '" + config + "' AND client = " + i + " AND v >= 50000")) {
                rs.next();
                check(rs.getLong(1) == AUTOSAVED, "autosaved rows " + rs.getLong(1));
            }
            c.commit();
        }
        c.setAutoCommit(true);
    }

    /**
     * setQueryTimeout: pgJDBC sends a CancelRequest on a connection of its own after a second;
     * it must reach the server connection running this client's query (or stop the query
     * still waiting for one): 57014, and the connection goes on.
     */
    static void cancelled(Connection c) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.setQueryTimeout(1);
            long start = System.nanoTime();
            expectState(st, "SELECT pg_sleep(60)", "57014");
            long ms = (System.nanoTime() - start) / 1_000_000;
            check(ms < 10_000, "cancelled after " + ms + " ms");
            st.setQueryTimeout(0);
            try (ResultSet rs = st.executeQuery("SELECT 7")) {
                check(rs.next() && rs.getInt(1) == 7, "after the cancel");
            }
        }
    }

    /** 22012 in a transaction, then 25P02 until the rollback, then normal again. */
    static void errorInTransaction(Connection c) throws SQLException {
        c.setAutoCommit(false);
        try (Statement st = c.createStatement()) {
            st.executeQuery("SELECT 1").close();
            expectState(st, "SELECT 1 / 0", "22012");
            expectState(st, "SELECT 1", "25P02");
            c.rollback();
            try (ResultSet rs = st.executeQuery("SELECT 41 + 1")) {
                rs.next();
                check(rs.getInt(1) == 42, "after rollback");
            }
            c.commit();
        }
        c.setAutoCommit(true);
    }

    static void expectState(Statement st, String sql, String sqlstate) {
        try {
            st.executeQuery(sql).close();
            throw new AssertionError(sql + " succeeded");
        } catch (SQLException e) {
            check(sqlstate.equals(e.getSQLState()), sql + ": SQLSTATE " + e.getSQLState()
                    + ", want " + sqlstate + " (" + e.getMessage() + ")");
        }
    }
}
