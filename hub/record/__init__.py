"""The medical record: retention with legal holds, patients' exports, audit exports."""
