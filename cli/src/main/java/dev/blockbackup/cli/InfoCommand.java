package dev.blockbackup.cli;

import dev.blockbackup.formats.BlockIOException;
import dev.blockbackup.formats.ImageFormat;
import dev.blockbackup.formats.ImageLock;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code blockbackup info}: qemu-img info, in its human and JSON forms and with its field names. */
@Command(
    name = "info",
    description = {
      "Show what an image is: format, virtual size, disk usage, cluster size, backing file, internal snapshots,"
          + " qcow2 header flags.",
      "The JSON form uses qemu-img info's field names and leaves out absent fields as it does.",
      "actual-size (human: 'disk size') differs from qemu-img's, which counts the host file's allocated blocks"
          + " (st_blocks), something Java cannot read: for qcow2 it is the host clusters in use times the"
          + " cluster size (at most the file's length), for raw the file's length.",
      "Examples:",
      "  blockbackup info disk.qcow2",
      "  blockbackup info --output=json disk.qcow2"
    },
    mixinStandardHelpOptions = true)
final class InfoCommand implements Callable<Integer> {

  enum Output { human, json }

  @Spec CommandSpec spec;

  @Option(names = "-f", paramLabel = "FMT", description = "Image format (raw or qcow2); probed when left out.")
  String format;

  @Option(names = {"-U", "--force-share"}, description = "Open FILE even while another process such as QEMU"
      + " writes it, as qemu-img info -U: without the locks that would conflict.")
  boolean forceShare;

  @Option(names = "--output", paramLabel = "FMT", description = "human (default) or json.")
  Output output = Output.human;

  @Parameters(index = "0", paramLabel = "FILE")
  Path file;

  @Override
  public Integer call() throws BlockIOException {
    ImageFormat fmt = Images.formatOf(file, format);
    ImageInfo info = forceShare ? ImageLock.forceShare(() -> ImageInfo.of(file, fmt)) : ImageInfo.of(file, fmt);
    PrintWriter out = spec.commandLine().getOut();
    if (output == Output.json) {
      out.println(info.json());
    } else {
      out.print(info.human());
    }
    return 0;
  }

}
