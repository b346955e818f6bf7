use clap::Parser;
use fitbench::cli::{Cli, Command, ProbeArgs, ProfilesArgs};
use fitbench::probe::{self, Hardware, ProbeOptions};
use fitbench::{output, profiles};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => probe_command(ProbeArgs::default()),
        Some(Command::Probe(args)) => probe_command(args),
        Some(Command::Profiles(args)) => profiles_command(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn probe_command(args: ProbeArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.save {
        profiles::validate_name(name)?;
    }
    let mut hardware = probe::probe(ProbeOptions {
        bandwidth: args.bandwidth,
    })?;
    if let Some(name) = args.save {
        hardware.origin = format!("probe of host {}", hardware.name);
        hardware.name = name;
        let path = profiles::save(&hardware, &profiles::profile_dir(), args.force)?;
        eprintln!("saved {}", path.display());
    }
    print_hardware(&hardware, args.json)
}

fn print_hardware(hardware: &Hardware, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(hardware)?);
    } else {
        println!("{}", output::hardware_table(hardware));
    }
    Ok(())
}

fn profiles_command(args: ProfilesArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.name {
        return print_hardware(&profiles::resolve(name)?, args.json);
    }
    let all = profiles::list()?;
    if args.json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|p| {
                let mut value = serde_json::to_value(&p.hardware)?;
                value["source"] = p.source.to_string().into();
                Ok(value)
            })
            .collect::<serde_json::Result<_>>()?;
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{}", output::profiles_table(&all));
    }
    Ok(())
}
