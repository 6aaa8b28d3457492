using System.ComponentModel;
using System.Diagnostics;
using System.Text;

namespace RebootlessUpdate.Images;

/// <summary>Runs a system tool (mkfs.ext4, blkid) with a bound on time.</summary>
internal static class Tools
{
    internal static (int ExitCode, string Output) Run(string file, IEnumerable<string> args, TimeSpan timeout, bool throwOnMissing = true)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        Process? p;
        try
        {
            p = Process.Start(psi);
        }
        catch (Win32Exception e)
        {
            if (!throwOnMissing)
            {
                return (-1, string.Empty);
            }

            throw new ImageStoreException($"cannot run {file}: {e.Message}; install it (e2fsprogs / util-linux)", e);
        }

        using (p)
        {
            if (p is null)
            {
                throw new ImageStoreException($"cannot run {file}");
            }

            var output = new StringBuilder();
            p.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
            p.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            if (!p.WaitForExit(timeout))
            {
                p.Kill(entireProcessTree: true);
                throw new ImageStoreException($"{file} {string.Join(' ', psi.ArgumentList)} did not finish within {timeout}; killed");
            }

            p.WaitForExit();
            lock (output)
            {
                return (p.ExitCode, output.ToString());
            }
        }
    }
}
