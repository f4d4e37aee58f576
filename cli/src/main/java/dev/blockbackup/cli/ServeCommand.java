package dev.blockbackup.cli;

import dev.blockbackup.engine.BlockNode;
import dev.blockbackup.formats.BlockDevice;
import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.CacheMode;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.qcow2.Qcow2CreateOptions;
import dev.blockbackup.formats.qcow2.Qcow2Image;
import dev.blockbackup.nbd.NbdExport;
import dev.blockbackup.nbd.NbdServer;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code blockbackup serve}: exports images over NBD, as qemu-storage-daemon with an nbd-server
 * and one block-export per image, until SIGTERM or SIGINT; then lets requests in flight finish and
 * closes every image (which stores a qcow2's persistent bitmaps).
 */
@Command(name = "serve", description = "Export images over NBD until SIGTERM/SIGINT, printing one URI per"
    + " export and address (as qemu-img and nbdinfo take them). With no IMAGE, serves a demo disk.")
final class ServeCommand implements Callable<Integer> {

  /** QEMU's NBD_DEFAULT_MAX_CONNECTIONS, the default of nbd-server-start's max-connections. */
  static final int DEFAULT_MAX_CONNECTIONS = 100;
  static final String DEFAULT_ADDRESS = "tcp:127.0.0.1:10809";
  private static final long DEMO_SIZE = 64L * 1024 * 1024;

  @Spec CommandSpec spec;

  @Parameters(paramLabel = "IMAGE[,name=N][,ro]", arity = "0..*",
      description = "An image to export (raw or qcow2); name= sets its export name (default: the file name"
          + " without its extension), ro exports it read-only.")
  List<String> images = new ArrayList<>();

  @Option(names = "--nbd", paramLabel = "unix:PATH|tcp:HOST:PORT",
      description = "Where to listen; may be repeated (default " + DEFAULT_ADDRESS + ").")
  List<String> addresses = new ArrayList<>();

  @Option(names = "--export-name", paramLabel = "NAME", description = "The export name of the single IMAGE.")
  String exportName;

  @Option(names = {"-r", "--read-only"}, description = "Export every image read-only.")
  boolean readOnly;

  @Option(names = "--max-connections", paramLabel = "N",
      description = "Connections served at once, 0 for unlimited (default " + DEFAULT_MAX_CONNECTIONS + ").")
  int maxConnections = DEFAULT_MAX_CONNECTIONS;

  @Option(names = "--handshake-max-seconds", paramLabel = "N",
      description = "Seconds a client has from connecting to finishing its handshake before it is disconnected,"
          + " 0 for no limit (default " + NbdServer.DEFAULT_HANDSHAKE_MAX_SECONDS + ", as QEMU).")
  int handshakeMaxSeconds = NbdServer.DEFAULT_HANDSHAKE_MAX_SECONDS;

  @Option(names = "-f", paramLabel = "FORMAT", description = "The images' format (default: probed).")
  String format;

  @Option(names = {"-U", "--force-share"}, description = "Open the images without the locks that would"
      + " conflict with a writer such as QEMU (read-only exports only), as qemu-img -U.")
  boolean forceShare;

  /** One IMAGE argument, parsed. */
  record Image(Path path, String name, boolean readOnly, ImageFormat format) {}

  /** One --nbd argument: a Unix socket path, or a TCP host and port. */
  record Address(Path unix, String host, int port) {
    String uri(String export) {
      return unix != null ? "nbd+unix:///" + export + "?socket=" + unix
          : "nbd://" + (host.contains(":") ? "[" + host + "]" : host) + ":" + port + "/" + export;
    }
  }

  @Override
  public Integer call() throws BlockIOException, IOException, InterruptedException {
    PrintWriter out = spec.commandLine().getOut();
    // Everything is checked before any image is opened or the demo disk made.
    List<Address> listen = new ArrayList<>();
    for (String a : addresses.isEmpty() ? List.of(DEFAULT_ADDRESS) : addresses) {
      listen.add(address(a));
    }
    if (listen.stream().filter(a -> a.unix() != null).count() > 1 || listen.stream().filter(a -> a.host() != null).count() > 1) {
      throw new UserError("--nbd: at most one unix: and one tcp: address");
    }
    if (maxConnections < 0) {
      throw new UserError("invalid --max-connections '" + maxConnections + "': must be 0 (unlimited) or more");
    }
    if (handshakeMaxSeconds < 0) {
      throw new UserError("invalid --handshake-max-seconds '" + handshakeMaxSeconds
          + "': must be 0 (no limit) or more");
    }
    if (exportName != null && images.size() != 1) {
      throw new UserError("--export-name names the export of a single IMAGE; use IMAGE,name=N for several");
    }
    if (format != null) {
      Images.driver(Path.of("-f"), format);
    }
    List<Image> parsed = new ArrayList<>();
    Set<String> names = new HashSet<>();
    for (String arg : images) {
      Image img = image(arg);
      if (forceShare && !img.readOnly()) {
        throw new UserError("-U opens '" + img.path() + "' without its locks, so it can only be exported read-only"
            + " (add -r or ,ro)");
      }
      if (!names.add(img.name())) {
        throw new UserError("export name '" + img.name() + "' is given twice (set one with ,name=N)");
      }
      parsed.add(img);
    }
    for (Address a : listen) {
      if (a.unix() != null) {
        Images.checkCreatable(a.unix());
        if (Files.isRegularFile(a.unix())) {
          throw new UserError("--nbd unix:" + a.unix() + ": a file of that name exists and is not a socket");
        }
      }
    }

    if (parsed.isEmpty()) {
      Path demo = demoDisk();
      out.println("serving a demo disk (64 MiB sparse qcow2 with some data): " + demo);
      parsed.add(new Image(demo, "demo", readOnly, ImageFormat.QCOW2));
    }
    List<BlockDevice> opened = new ArrayList<>();
    try {
      NbdServer.Builder b = NbdServer.builder().maxConnections(maxConnections)
          .handshakeMaxSeconds(handshakeMaxSeconds);
      for (Image img : parsed) {
        BlockDevice dev = Images.open(img.path(), img.format(), img.readOnly(), CacheMode.WRITEBACK, forceShare);
        opened.add(dev);
        b.export(NbdExport.of(img.name(), BlockNode.of(img.name(), dev)).withReadOnly(img.readOnly()));
      }
      for (Address a : listen) {
        if (a.unix() != null) {
          b.unixSocket(a.unix());
        } else {
          b.tcp(a.host(), a.port());
        }
      }
      serve(b.build(), parsed, listen, out, opened);
    } finally {
      closeAll(opened);
    }
    return 0;
  }

  /**
   * Starts the server, prints the URIs and waits for SIGTERM/SIGINT; returns once the server and
   * the {@code opened} devices are closed.
   */
  private static void serve(NbdServer server, List<Image> images, List<Address> listen, PrintWriter out,
      List<BlockDevice> opened) throws InterruptedException, BlockIOException {
    CountDownLatch stop = new CountDownLatch(1);
    CountDownLatch done = new CountDownLatch(1);
    AtomicInteger status = new AtomicInteger(1);
    // The JVM exits once its hooks return, with 128+signal: the hook waits until the images are
    // closed, then ends the process with 0, since stopping on SIGTERM/SIGINT is serve's normal end
    // (1 if closing an image failed).
    Thread hook = new Thread(() -> {
      stop.countDown();
      try {
        done.await();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
      Runtime.getRuntime().halt(status.get());
    }, "serve-shutdown");
    Runtime.getRuntime().addShutdownHook(hook);
    try (server) {
      try {
        server.start();
      } catch (IOException e) {
        throw new UserError(e.getMessage(), e);
      }
      for (Address a : listen) {
        Address bound = a.unix() != null ? a : new Address(null, a.host(), server.tcpAddress().getPort());
        for (Image img : images) {
          out.println(bound.uri(img.name()));
        }
      }
      out.flush();
      stop.await();
      server.close();
      closeAll(opened);
      status.set(0);
    } finally {
      out.flush();
      done.countDown();
      if (stop.getCount() > 0) {
        // ended without a signal (the server could not start): the exit code is the caller's
        try {
          Runtime.getRuntime().removeShutdownHook(hook);
        } catch (IllegalStateException shuttingDown) {
          // a signal came meanwhile; the hook ends the process
        }
      }
    }
  }

  private static void closeAll(List<BlockDevice> devices) throws BlockIOException {
    BlockIOException first = null;
    List<BlockDevice> all = new ArrayList<>(devices);
    devices.clear();
    for (BlockDevice d : all) {
      try {
        d.flush();
        d.close();
      } catch (BlockIOException e) {
        if (first == null) {
          first = e;
        } else {
          first.addSuppressed(e);
        }
      }
    }
    if (first != null) {
      throw first;
    }
  }

  /** An --nbd address: unix:PATH or tcp:HOST:PORT ([v6]:PORT too). */
  static Address address(String s) {
    if (s.startsWith("unix:") && s.length() > 5) {
      return new Address(Path.of(s.substring(5)), null, 0);
    }
    if (s.startsWith("tcp:")) {
      String hp = s.substring(4);
      int colon = hp.lastIndexOf(':');
      if (colon > 0 && colon < hp.length() - 1) {
        String host = hp.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) {
          host = host.substring(1, host.length() - 1);
        }
        try {
          int port = Integer.parseInt(hp.substring(colon + 1));
          if (port >= 0 && port <= 65535 && !host.isEmpty()) {
            return new Address(null, host, port);
          }
        } catch (NumberFormatException e) {
          // reported below
        }
      }
    }
    throw new UserError("invalid --nbd '" + s + "' (expected unix:PATH or tcp:HOST:PORT, port 0..65535)");
  }

  /** An IMAGE argument: the path, then ,name=N and ,ro in any order. */
  private Image image(String arg) {
    String[] parts = arg.split(",", -1);
    if (parts[0].isEmpty()) {
      throw new UserError("invalid IMAGE '" + arg + "': no file name");
    }
    Path path = Path.of(parts[0]);
    String name = exportName;
    boolean ro = readOnly;
    for (int i = 1; i < parts.length; i++) {
      String p = parts[i];
      if (p.equals("ro")) {
        ro = true;
      } else if (p.startsWith("name=") && p.length() > 5) {
        name = p.substring(5);
      } else {
        throw new UserError("invalid option '" + p + "' in IMAGE '" + arg + "' (expected name=N or ro)");
      }
    }
    if (name == null) {
      String base = path.getFileName().toString();
      int dot = base.lastIndexOf('.');
      name = dot > 0 ? base.substring(0, dot) : base;
    }
    ImageFormat fmt = Images.formatOf(path, format);
    if (!ro && !Files.isWritable(path)) {
      throw new UserError("cannot open '" + path + "' for writing: permission denied (export it with ,ro or -r)");
    }
    return new Image(path, name, ro, fmt);
  }

  /** A sparse qcow2 in a new temporary directory: a pattern at its start, a stretch at 16 MiB, holes elsewhere. */
  private static Path demoDisk() throws IOException, BlockIOException {
    Path dir = Files.createTempDirectory("blockbackup-serve-");
    Path path = dir.resolve("demo.qcow2");
    try (Qcow2Image img = Qcow2Image.create(path, Qcow2CreateOptions.of(DEMO_SIZE))) {
      ByteBuffer buf = ByteBuffer.allocate(1024 * 1024);
      for (int i = 0; i < buf.capacity(); i++) {
        buf.put(i, (byte) (i * 31 + 7));
      }
      img.write(0, buf.duplicate());
      img.write(16L * 1024 * 1024, buf.duplicate());
      img.flush();
    }
    return path;
  }
}
