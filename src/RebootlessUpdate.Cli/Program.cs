using RebootlessUpdate.Cli;

CrashInjection.InstallFromEnvironment();
return await CliApp.RunAsync(args).ConfigureAwait(false);
